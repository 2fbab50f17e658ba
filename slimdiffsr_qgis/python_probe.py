"""Ask a Python interpreter, by running it, what it is and which modules it has; pick QGIS's own from candidates.

A path that looks right proves nothing (a pyenv shim is named `python3`, a venv's
`bin/python` may link to a Python that was removed), so every candidate is run
with a tiny script before set-up builds anything on it. No QGIS import.
"""

from __future__ import annotations

import json
import os
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Optional, Sequence

from .interpreter import CREATE_NO_WINDOW, QgisPython, clean_environment

PROBE_TIMEOUT_S = 60.0
# What the backend's venv needs from the Python it is made from: GDAL's bindings
# (no wheels on PyPI, so they must come from QGIS's Python) and numpy.
BASE_MODULES = ("osgeo.gdal", "numpy")
# Reports the version, then for each module to import its file and version or the
# error, and for each module to look for (not imported: torch takes seconds) its
# installed version, "" when found without metadata, or null when absent.
PROBE_SCRIPT = r"""
import importlib, importlib.metadata, importlib.util, json, sys
report = {"version": list(sys.version_info[:2]), "executable": sys.executable, "imported": {}, "found": {}}
for name in filter(None, sys.argv[1].split(",")):
    try:
        module = importlib.import_module(name)
        report["imported"][name] = {"file": getattr(module, "__file__", None) or "",
                                    "version": str(getattr(module, "__version__", ""))}
    except Exception as error:
        report["imported"][name] = {"error": f"{type(error).__name__}: {error}"}
for name in filter(None, sys.argv[2].split(",")):
    try:
        spec = importlib.util.find_spec(name)
    except Exception:
        spec = None
    version = None
    if spec is not None:
        try:
            version = importlib.metadata.version(name)
        except Exception:
            version = ""
    report["found"][name] = version
print(json.dumps(report))
"""


@dataclass(frozen=True)
class Probe:
    """What running one interpreter told us; `failure` says why it did not run (empty when it did)."""

    python: str
    failure: str = ""
    version: tuple[int, int] = (0, 0)
    imported: dict[str, dict[str, str]] = field(default_factory=dict)
    found: dict[str, Optional[str]] = field(default_factory=dict)

    @property
    def ran(self) -> bool:
        return not self.failure

    def import_error(self, name: str) -> str:
        """Why `name` did not import ("" when it did)."""
        return self.imported.get(name, {}).get("error", "" if name in self.imported else "not tried")

    def module_file(self, name: str) -> str:
        return self.imported.get(name, {}).get("file", "")


def missing_interpreter(python: str) -> str:
    """Why `python` cannot even be started, judged on the file system ("" when it exists)."""
    path = Path(python)
    if path.is_symlink() and not path.exists():
        return (f"it is a link to {os.readlink(path)}, which no longer exists "
                "(the Python it was made from was removed or moved)")
    if not path.exists():
        return "it does not exist"
    return ""


def probe_python(python: str, imports: Sequence[str] = (), finds: Sequence[str] = (),
                 environ: Optional[Mapping[str, str]] = None, cwd: Optional[str] = None,
                 windows: bool = False, timeout: float = PROBE_TIMEOUT_S) -> Probe:
    """Run `python` with the probe script in the backend's clean environment and read its report."""
    missing = missing_interpreter(python)
    if missing:
        return Probe(python, failure=missing)
    try:
        done = subprocess.run([python, "-c", PROBE_SCRIPT, ",".join(imports), ",".join(finds)],
                              capture_output=True, timeout=timeout, cwd=cwd,
                              env=clean_environment(os.environ if environ is None else environ),
                              creationflags=CREATE_NO_WINDOW if windows else 0)
    except subprocess.TimeoutExpired:
        return Probe(python, failure=f"it did not answer within {timeout:g} s")
    except OSError as error:
        return Probe(python, failure=f"it cannot be started ({error.strerror or error})")
    output = done.stdout.decode("utf-8", errors="replace").strip().splitlines()
    try:
        report = json.loads(output[-1])
    except (IndexError, ValueError):
        words = done.stderr.decode("utf-8", errors="replace").strip().splitlines()
        return Probe(python, failure=f"it does not run as Python (exit code {done.returncode}"
                                     + (f": {words[-1]}" if words else "") + ")")
    return Probe(python, version=tuple(report["version"]), imported=report["imported"], found=report["found"])


def same_folder(a: str, b: str) -> bool:
    """True when two folder paths name the same folder, links resolved."""
    return os.path.normcase(os.path.realpath(a)) == os.path.normcase(os.path.realpath(b))


def base_refusal(probe: Probe, version: Optional[tuple[int, int]], osgeo_dir: str) -> str:
    """Why a probed interpreter cannot be the base of the backend's venv ("" when it can).

    `version` and `osgeo_dir` are QGIS's: when given, the candidate must be that
    Python and use that GDAL, which identifies QGIS's own interpreter among
    other Pythons that happen to have GDAL bindings.
    """
    if not probe.ran:
        return probe.failure
    if version is not None and probe.version != tuple(version):
        return f"it is Python {probe.version[0]}.{probe.version[1]}, but QGIS runs Python {version[0]}.{version[1]}"
    if probe.import_error("osgeo.gdal"):
        return f"it has no GDAL Python bindings ({probe.import_error('osgeo.gdal')})"
    if probe.import_error("numpy"):
        return f"it has no numpy ({probe.import_error('numpy')})"
    theirs = str(Path(probe.module_file("osgeo.gdal")).parent)
    if osgeo_dir and not same_folder(theirs, osgeo_dir):
        return f"its GDAL bindings ({theirs}) are not QGIS's ({osgeo_dir})"
    return ""


@dataclass(frozen=True)
class BaseChoice:
    """The interpreter set-up builds the venv from, or why none could be used.

    refused: (candidate, reason) for every candidate that was tried and turned down.
    torch: the PyTorch version already installed in the chosen Python (None when absent).
    """

    python: str
    gdal_version: str = ""
    torch: Optional[str] = None
    refused: list[tuple[str, str]] = field(default_factory=list)

    def explanation(self) -> str:
        """A paragraph for the set-up dialog: what was tried, why each was refused, what to do."""
        if self.python:
            return f"Using {self.python} (GDAL {self.gdal_version})."
        tried = "\n".join(f"  • {candidate}: {reason}" for candidate, reason in self.refused)
        return ("QGIS's own Python was not found. Tried:\n" + tried + "\nChoose a Python interpreter that "
                "can import GDAL's bindings (osgeo) and numpy, normally the one QGIS was installed with.")


def choose_base_python(candidates: Sequence[Path], qgis: Optional[QgisPython],
                       environ: Optional[Mapping[str, str]] = None, cwd: Optional[str] = None) -> BaseChoice:
    """The first candidate that runs as QGIS's Python with QGIS's GDAL and numpy.

    With `qgis` None (an interpreter the user chose) only GDAL and numpy are required.
    Candidates that do not exist are skipped silently when another one is accepted,
    and listed as tried otherwise.
    """
    refused: list[tuple[str, str]] = []
    windows = qgis.windows if qgis is not None else os.name == "nt"
    for candidate in candidates:
        probe = probe_python(str(candidate), imports=BASE_MODULES, finds=("torch",), environ=environ, cwd=cwd,
                             windows=windows)
        reason = base_refusal(probe, qgis.version if qgis else None, qgis.osgeo_dir if qgis else "")
        if not reason:
            return BaseChoice(str(candidate), gdal_version=probe.imported["osgeo.gdal"]["version"],
                              torch=probe.found.get("torch"), refused=refused)
        refused.append((str(candidate), reason))
    return BaseChoice("", refused=refused)
