"""Find the Python interpreter that runs the backend, and the command and environment that start it.

Pure functions of paths and platform facts (no QGIS, no globals), so the
Windows and first-run branches are unit-tested on any machine.
Order of preference:
    1. the interpreter named in the settings (`slimdiffsr/backend_python`);
    2. the venv that first-run set-up made in the QGIS profile folder;
    3. the repository's `.venv`, when the plugin runs from a source checkout;
    4. QGIS's own interpreter, found from the QGIS install layout (see
       `qgis_interpreter_candidates`), never from the PATH alone: `sys.executable`
       inside QGIS is the QGIS binary (Windows, macOS) or whatever `python3`
       comes first on the PATH (Linux), often a Python without GDAL.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping, Optional

SERVER_MODULE = "backend.server"
FIRST_RUN_FOLDER = "slimdiffsr"
CREATE_NO_WINDOW = 0x08000000
# Variables that make a child Python load QGIS's modules or QGIS's Python home
# instead of its own; the backend must start from a clean slate.
DROPPED_VARIABLES = ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "PYTHONEXECUTABLE", "VIRTUAL_ENV")
DROPPED_PREFIXES = ("QGIS",)


class InterpreterNotFound(Exception):
    """No candidate interpreter exists; the message lists where we looked."""


@dataclass(frozen=True)
class LaunchSpec:
    """Everything `subprocess.Popen` needs to start one backend process."""

    argv: list[str]
    cwd: Optional[str] = None
    env: dict[str, str] = field(default_factory=dict)
    creationflags: int = 0


def venv_python(venv_dir: Path, windows: bool) -> Path:
    """The interpreter inside a venv folder."""
    return venv_dir / ("Scripts/python.exe" if windows else "bin/python")


def first_run_venv(profile_dir: Path) -> Path:
    """Where first-run set-up puts its venv: inside the user's QGIS profile folder."""
    return Path(profile_dir) / FIRST_RUN_FOLDER / "venv"


def checkout_root(plugin_dir: Path) -> Optional[Path]:
    """The repository root when the plugin runs from a source checkout, else None."""
    root = Path(plugin_dir).resolve().parent
    return root if (root / "backend" / "server.py").is_file() else None


@dataclass(frozen=True)
class QgisPython:
    """Facts about the Python embedded in QGIS, from which its real interpreter is found.

    `executable` is `sys.executable`, which cannot be trusted: on Linux an
    embedded Python takes the first `python3` on the PATH (a pyenv shim, a conda
    or Homebrew Python), on Windows and macOS it is the QGIS binary. The reliable
    facts are `base_exec_prefix` (where QGIS's Python library lives), the
    version, and QGIS's install prefix (`QgsApplication.prefixPath()`).
    `osgeo_dir` is the folder of the GDAL bindings QGIS imports ("" when unknown).
    """

    executable: str
    base_exec_prefix: str
    version: tuple[int, int]
    qgis_prefix: str
    windows: bool
    osgeo_dir: str = ""


def qgis_interpreter_candidates(qgis: QgisPython) -> list[Path]:
    """Where QGIS's own interpreter may be, most likely first, for every way QGIS is installed.

    Linux packages, conda, Homebrew and the Flatpak: `<base_exec_prefix>/bin/pythonX.Y`.
    macOS app bundle: the same under the bundled framework, or `Contents/MacOS/bin/python3`
    beside the QGIS binary and under the prefix. OSGeo4W and the standalone Windows
    installer: `apps/PythonXY/python.exe`, which is `base_exec_prefix` and a sibling
    of the QGIS prefix `apps/qgis`. `sys.executable` comes last, and only when it
    is a Python at all. Nothing here says a candidate works: run it to find out.
    """
    major, minor = qgis.version
    base, prefix, executable = Path(qgis.base_exec_prefix), Path(qgis.qgis_prefix), Path(qgis.executable)
    is_python = executable.name.lower().startswith("python")
    # Beside the QGIS binary (Windows, macOS) a Python may live; beside a Python that
    # only the PATH chose, there is nothing of QGIS's to find.
    beside = [] if is_python else [executable.parent, executable.parent / "bin"]
    if qgis.windows:
        names = ["python.exe", "python3.exe"]
        folders = [base, prefix.parent / f"Python{major}{minor}", *beside]
    else:
        names = [f"python{major}.{minor}", "python3"]
        folders = [base / "bin", prefix / "bin", *beside]
    candidates = [folder / name for folder in folders for name in names]
    if is_python:
        candidates.append(executable)
    unique: dict[str, Path] = {}
    for candidate in candidates:
        unique.setdefault(os.path.normcase(str(candidate)), candidate)
    return list(unique.values())


def prepared_interpreters(profile_dir: Path, plugin_dir: Path, windows: bool) -> list[Path]:
    """Interpreters made for the backend: the first-run venv, then a checkout's `.venv`."""
    candidates = [venv_python(first_run_venv(profile_dir), windows)]
    root = checkout_root(plugin_dir)
    if root is not None:
        candidates.append(venv_python(root / ".venv", windows))
    return candidates


def find_backend_python(configured: str, profile_dir: Path, plugin_dir: Path, qgis: QgisPython,
                        exists: Callable[[Path], bool] = Path.is_file) -> str:
    """The interpreter to start the backend with, by the order in the module docstring.

    A configured interpreter is returned even when it does not exist, so the
    start-up error names what the user set rather than silently using another.
    An existing first-run venv is returned even when broken: the backend check
    then says what is wrong with it, and set-up rebuilds it.
    """
    if configured:
        return configured
    candidates = prepared_interpreters(profile_dir, plugin_dir, qgis.windows) + qgis_interpreter_candidates(qgis)
    for candidate in candidates:
        if exists(candidate) or candidate.is_symlink():
            return str(candidate)
    looked = ", ".join(str(c) for c in candidates)
    raise InterpreterNotFound(
        f"no Python interpreter for the SlimDiffSR backend was found (looked at: {looked}). "
        "Use 'Set up backend' in the SlimDiffSR panel, or choose an interpreter in its settings.")


def clean_environment(environ: Mapping[str, str]) -> dict[str, str]:
    """The parent's environment without QGIS's Python settings, with unbuffered UTF-8 I/O."""
    env = {key: value for key, value in environ.items()
           if key not in DROPPED_VARIABLES and not key.upper().startswith(DROPPED_PREFIXES)}
    env["PYTHONUNBUFFERED"] = "1"
    env["PYTHONIOENCODING"] = "utf-8"
    return env


def backend_launch(python: str, plugin_dir: Path, windows: bool, environ: Mapping[str, str],
                   neutral_dir: str) -> LaunchSpec:
    """How to start the backend server with `python`.

    From a checkout the server module is found through the working directory
    (the repository root); an installed backend is found in the interpreter's
    site-packages, and a neutral working directory keeps stray folders named
    `backend` from shadowing it.
    """
    root = checkout_root(plugin_dir)
    return LaunchSpec(
        argv=[python, "-m", SERVER_MODULE],
        cwd=str(root) if root is not None else neutral_dir,
        env=clean_environment(environ),
        creationflags=CREATE_NO_WINDOW if windows else 0,
    )


def current_platform_is_windows() -> bool:
    """True on Windows; a function so callers read as intent and tests pass the fact explicitly."""
    return os.name == "nt"
