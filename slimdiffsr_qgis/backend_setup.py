"""First-run set-up: (re)build the backend's venv in the QGIS profile folder and install torch and the backend into it.

The venv is made from QGIS's own Python (found and checked by `python_probe`)
with system site packages, so the backend uses QGIS's GDAL and numpy (GDAL has
no wheels on PyPI); nothing is installed into QGIS's Python itself. Every run
rebuilds the venv from scratch (`venv --clear`), so a failed, interrupted or
broken set-up is repaired by running it again. When QGIS's Python already has
torch, the venv sees it and the torch download is skipped. No model is
downloaded: the backend package the plugin zip carries includes the default
weights. No QGIS import: the steps are plain subprocesses, testable without a GUI.
"""

from __future__ import annotations

import collections
import re
import shlex
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping, Optional, Sequence

from .interpreter import CREATE_NO_WINDOW, checkout_root, clean_environment, venv_python

WHEEL_FOLDER = "wheels"
PIP_QUIET = ["--disable-pip-version-check", "--no-input", "--progress-bar", "off"]
CHECK_SCRIPT = ("import torch, osgeo.gdal, backend.server; "
                "print('torch', torch.__version__, 'gdal', osgeo.gdal.__version__)")
FAILED_STEP_LINES_KEPT = 400
# Where pip names a package it found no release of (after the network hints: no index reachable looks the same).
NOT_FOUND = re.compile(r"No matching distribution found for (\S+)")
NETWORK_SETTINGS = "QGIS's network settings (Settings > Options > Network)"
# pip's and Python's words for failures a user can act on, most specific first,
# each with what to check.
NETWORK_FAILURES: list[tuple[tuple[str, ...], str]] = [
    (("ProxyError", "Tunnel connection failed", "407 Proxy Authentication"),
     "pip could not get through the proxy: check the proxy host, port, user and password in " + NETWORK_SETTINGS),
    (("SSLError", "CERTIFICATE_VERIFY_FAILED", "certificate verify failed"),
     "pip could not make a secure (HTTPS) connection: the certificate was not trusted. A proxy or firewall that "
     "inspects HTTPS needs its certificate given to pip (ask your IT; pip's --cert option or the PIP_CERT "
     "variable), and the proxy must be set in " + NETWORK_SETTINGS),
    (("Could not fetch URL", "NewConnectionError", "Failed to establish a new connection",
      "Temporary failure in name resolution", "Max retries exceeded", "Network is unreachable"),
     "pip could not reach the package index: check the internet connection, and if this network needs a "
     "proxy, set it in " + NETWORK_SETTINGS),
]
OTHER_FAILURES: list[tuple[tuple[str, ...], str]] = [
    (("No space left on device",),
     "the disk is full: free some space in the QGIS profile folder's drive (PyTorch needs about 1 GB "
     "unpacked, the CUDA build several GB)"),
    (("ensurepip is not available", "No module named ensurepip"),
     "this Python cannot make environments with pip; on Debian or Ubuntu install the package python3-venv"),
    (("No module named 'osgeo'",),
     "the environment has no GDAL Python bindings (osgeo): it must be made from QGIS's own Python; choose "
     "that interpreter in the set-up dialog"),
    (("No module named 'torch'",), "PyTorch was not installed into the environment; run set-up again"),
    (("No module named 'backend'",), "the SlimDiffSR backend package was not installed; run set-up again"),
]


class SetupError(Exception):
    """A set-up step failed; the message names the step and, where known, what to check."""


@dataclass(frozen=True)
class Step:
    """One command of the set-up, with the title shown in the progress dialog.

    env: variables added for this step only (pip's proxy), never logged.
    """

    title: str
    argv: list[str]
    skip_if_succeeds: Optional[list[str]] = None
    env: dict[str, str] = field(default_factory=dict)


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


def setup_steps(base_python: str, venv_dir: Path, package: str, torch_args: Sequence[str], windows: bool,
                pip_env: Optional[Mapping[str, str]] = None) -> list[Step]:
    """The commands that make a working backend venv, in order.

    `venv --clear` empties an existing folder first: a venv left by an earlier
    set-up, made from another Python, or half-made, is rebuilt rather than reused.
    torch_args: pip arguments from the download plan; empty skips the torch step.
    """
    python = str(venv_python(Path(venv_dir), windows))
    pip = [python, "-m", "pip", "install", *PIP_QUIET]
    env = dict(pip_env or {})
    steps = [Step("Create the environment",
                  [base_python, "-m", "venv", "--clear", "--system-site-packages", str(venv_dir)])]
    if torch_args:
        steps.append(Step("Install PyTorch", [*pip, *torch_args], skip_if_succeeds=[python, "-c", "import torch"],
                          env=env))
    steps.append(Step("Install the SlimDiffSR backend", [*pip, package], env=env))
    steps.append(Step("Check the backend", [python, "-c", CHECK_SCRIPT]))
    return steps


def explain_failure(lines: Sequence[str]) -> str:
    """What a failed step's output means for the user ("" when it says nothing we recognise)."""
    text = "\n".join(lines)
    network = _first_hint(NETWORK_FAILURES, text)
    if network:
        return network
    missing = NOT_FOUND.search(text)
    if missing:
        return (f"pip found no release of {missing.group(1)} for this Python and platform; for PyTorch, "
                "set another requirement under 'PyTorch for set-up' in the settings")
    return _first_hint(OTHER_FAILURES, text)


def _first_hint(hints: list[tuple[tuple[str, ...], str]], text: str) -> str:
    return next((hint for needles, hint in hints if any(needle in text for needle in needles)), "")


def run_steps(steps: list[Step], log: Callable[[str], None], environ: Mapping[str, str], cwd: str,
              on_step: Optional[Callable[[int, int, str], None]] = None,
              is_cancelled: Callable[[], bool] = lambda: False, windows: bool = False) -> None:
    """Run each step in folder `cwd`, streaming its output to `log`; raises SetupError on the first failure.

    `cwd` must not hold a `backend` folder (the check step would import that one
    instead of the installed package): the QGIS profile folder is a good choice.
    on_step(index, count, title) is called before each step, for a progress bar.
    """
    base_env = clean_environment(environ)
    flags = CREATE_NO_WINDOW if windows else 0
    for index, step in enumerate(steps):
        if on_step is not None:
            on_step(index, len(steps), step.title)
        log(f"== {step.title}")
        env = {**base_env, **step.env}
        if step.skip_if_succeeds is not None and _succeeds(step.skip_if_succeeds, env, cwd, flags):
            log("   already available, skipped")
            continue
        log("$ " + shlex.join(step.argv))
        output: collections.deque[str] = collections.deque(maxlen=FAILED_STEP_LINES_KEPT)
        process = subprocess.Popen(step.argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, cwd=cwd,
                                   creationflags=flags)
        for raw in process.stdout:
            line = raw.decode("utf-8", errors="replace").rstrip()
            output.append(line)
            log(line)
            if is_cancelled():
                process.kill()
        code = process.wait()
        process.stdout.close()
        if is_cancelled():
            raise SetupError(f"set-up was cancelled during '{step.title}'; run it again to start over")
        if code != 0:
            hint = explain_failure(output)
            raise SetupError(f"'{step.title}' failed (exit code {code}): "
                             + (hint if hint else "see the log for the reason") + ". Set-up can be run again.")
    if on_step is not None:
        on_step(len(steps), len(steps), "Done")


def _succeeds(argv: list[str], env: Mapping[str, str], cwd: str, flags: int) -> bool:
    return subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=dict(env), cwd=cwd,
                          creationflags=flags).returncode == 0
