"""First-run set-up: make the backend's venv in the QGIS profile folder and install torch and the backend into it.

The venv is made from QGIS's own Python with system site packages, so the
backend uses QGIS's GDAL and numpy (GDAL has no wheels on PyPI); nothing is
installed into QGIS's Python itself. When QGIS's Python already has torch, the
venv sees it and the torch download is skipped. No model is downloaded: the
backend package the plugin zip carries includes the default weights.
No QGIS import: the steps are plain subprocesses, testable without a GUI.
"""

from __future__ import annotations

import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping, Optional

from .interpreter import (CREATE_NO_WINDOW, checkout_root, clean_environment, venv_python,
                          windows_python_beside)

WHEEL_FOLDER = "wheels"
PIP_QUIET = ["--disable-pip-version-check", "--no-input", "--progress-bar", "off"]


class SetupError(Exception):
    """A set-up step failed; the message names the step, the log holds pip's own words."""


@dataclass(frozen=True)
class Step:
    """One command of the set-up, with the title shown in the progress dialog."""

    title: str
    argv: list[str]
    skip_if_succeeds: Optional[list[str]] = None


def qgis_python(executable: str, exec_prefix: str, version: tuple[int, int], windows: bool,
                exists: Callable[[Path], bool] = Path.is_file) -> str:
    """The real Python interpreter behind QGIS, to make the venv from.

    Inside QGIS `sys.executable` may be the QGIS binary rather than Python (always
    on Windows and macOS), so look for `python` beside it and in its Python home.
    """
    if Path(executable).name.lower().startswith("python"):
        return executable
    if windows:
        candidates = windows_python_beside(executable, exec_prefix)
    else:
        major, minor = version
        candidates = [Path(exec_prefix) / "bin" / f"python{major}.{minor}", Path(exec_prefix) / "bin" / "python3",
                      Path(executable).parent / f"python{major}.{minor}", Path(executable).parent / "python3"]
    for candidate in candidates:
        if exists(candidate):
            return str(candidate)
    raise SetupError("QGIS's own Python interpreter was not found (looked at "
                     + ", ".join(map(str, candidates)) + "); set the backend interpreter in the settings instead")


def backend_package(plugin_dir: Path) -> str:
    """What pip installs as the backend: the wheel the plugin zip carries, or the checkout itself."""
    wheels = sorted((Path(plugin_dir) / WHEEL_FOLDER).glob("slimdiffsr-*.whl"))
    if wheels:
        return str(wheels[-1])
    root = checkout_root(plugin_dir)
    if root is not None:
        return str(root)
    raise SetupError(f"the plugin folder {plugin_dir} carries no backend package ({WHEEL_FOLDER}/slimdiffsr-*.whl); "
                     "reinstall the plugin from its zip")


def setup_steps(base_python: str, venv_dir: Path, package: str, torch_requirement: str, windows: bool) -> list[Step]:
    """The commands that make a working backend venv, in order."""
    python = str(venv_python(Path(venv_dir), windows))
    pip = [python, "-m", "pip", "install", *PIP_QUIET]
    return [
        Step("Create the environment", [base_python, "-m", "venv", "--system-site-packages", str(venv_dir)]),
        Step("Install PyTorch", [*pip, *shlex.split(torch_requirement)],
             skip_if_succeeds=[python, "-c", "import torch"]),
        Step("Install the SlimDiffSR backend", [*pip, package]),
        Step("Check the backend", [python, "-c", "import torch, osgeo.gdal, backend.server; "
                                                 "print('torch', torch.__version__, 'gdal', osgeo.gdal.__version__)"]),
    ]


def run_steps(steps: list[Step], log: Callable[[str], None], environ: Mapping[str, str], cwd: str,
              on_step: Optional[Callable[[int, int, str], None]] = None,
              is_cancelled: Callable[[], bool] = lambda: False, windows: bool = False) -> None:
    """Run each step in folder `cwd`, streaming its output to `log`; raises SetupError on the first failure.

    `cwd` must not hold a `backend` folder (the check step would import that one
    instead of the installed package): the QGIS profile folder is a good choice.
    on_step(index, count, title) is called before each step, for a progress bar.
    """
    env = clean_environment(environ)
    flags = CREATE_NO_WINDOW if windows else 0
    for index, step in enumerate(steps):
        if on_step is not None:
            on_step(index, len(steps), step.title)
        log(f"== {step.title}")
        if step.skip_if_succeeds is not None and _succeeds(step.skip_if_succeeds, env, cwd, flags):
            log("   already available, skipped")
            continue
        log("$ " + " ".join(shlex.quote(a) for a in step.argv))
        process = subprocess.Popen(step.argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, cwd=cwd,
                                   creationflags=flags)
        for raw in process.stdout:
            log(raw.decode("utf-8", errors="replace").rstrip())
            if is_cancelled():
                process.kill()
        code = process.wait()
        process.stdout.close()
        if is_cancelled():
            raise SetupError(f"set-up was cancelled during '{step.title}'")
        if code != 0:
            raise SetupError(f"'{step.title}' failed (exit code {code}); see the log for the reason")
    if on_step is not None:
        on_step(len(steps), len(steps), "Done")


def _succeeds(argv: list[str], env: Mapping[str, str], cwd: str, flags: int) -> bool:
    return subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=dict(env), cwd=cwd,
                          creationflags=flags).returncode == 0


def this_python() -> tuple[str, str, tuple[int, int]]:
    """The running interpreter's facts that `qgis_python` needs."""
    return sys.executable, sys.exec_prefix, (sys.version_info.major, sys.version_info.minor)
