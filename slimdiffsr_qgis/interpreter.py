"""Find the Python interpreter that runs the backend, and the command and environment that start it.

Pure functions of paths and platform facts (no QGIS, no globals), so the
Windows and first-run branches are unit-tested on any machine.
Order of preference:
    1. the interpreter named in the settings (`slimdiffsr/backend_python`);
    2. the venv that first-run set-up made in the QGIS profile folder;
    3. the repository's `.venv`, when the plugin runs from a source checkout;
    4. on Windows, `python.exe` beside QGIS's executable (QGIS's `sys.executable`
       is the QGIS binary there, and there is no `python3`);
    5. `python3` on the PATH.
"""

from __future__ import annotations

import os
import shutil
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


def windows_python_beside(executable: str, exec_prefix: str) -> list[Path]:
    """Where QGIS on Windows keeps a real python.exe: beside the QGIS binary, or in its Python home."""
    return [Path(executable).parent / "python.exe", Path(executable).parent / "python3.exe",
            Path(exec_prefix) / "python.exe"]


def prepared_interpreters(profile_dir: Path, plugin_dir: Path, windows: bool) -> list[Path]:
    """Interpreters made for the backend: the first-run venv, then a checkout's `.venv`."""
    candidates = [venv_python(first_run_venv(profile_dir), windows)]
    root = checkout_root(plugin_dir)
    if root is not None:
        candidates.append(venv_python(root / ".venv", windows))
    return candidates


def find_backend_python(configured: str, profile_dir: Path, plugin_dir: Path, executable: str,
                        exec_prefix: str, windows: bool,
                        exists: Callable[[Path], bool] = Path.is_file,
                        which: Callable[[str], Optional[str]] = shutil.which) -> str:
    """The interpreter to start the backend with, by the order in the module docstring.

    A configured interpreter is returned even when it does not exist, so the
    start-up error names what the user set rather than silently using another.
    """
    if configured:
        return configured
    candidates = prepared_interpreters(profile_dir, plugin_dir, windows)
    if windows:
        candidates.extend(windows_python_beside(executable, exec_prefix))
    for candidate in candidates:
        if exists(candidate):
            return str(candidate)
    on_path = None if windows else which("python3")
    if on_path:
        return on_path
    looked = ", ".join(str(c) for c in candidates) + ("" if windows else ", python3 on the PATH")
    raise InterpreterNotFound(
        f"no Python interpreter for the SlimDiffSR backend was found (looked at: {looked}). "
        "Use 'Set up backend' in the SlimDiffSR panel, or choose an interpreter in its settings.")


def backend_is_set_up(configured: str, profile_dir: Path, plugin_dir: Path, windows: bool,
                      exists: Callable[[Path], bool] = Path.is_file) -> bool:
    """True when a backend interpreter was chosen or made for us (setting, first-run venv, checkout venv).

    QGIS's own Python or a `python3` on the PATH may still lack torch, so they
    do not count: the panel then offers first-run set-up up front.
    """
    return bool(configured) or any(exists(c) for c in prepared_interpreters(profile_dir, plugin_dir, windows))


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
