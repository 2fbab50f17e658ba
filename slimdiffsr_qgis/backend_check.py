"""Is the backend set up? Only a backend that answers a ping is; otherwise say exactly what is missing.

A venv folder that exists proves nothing: its interpreter may link to a Python
that is gone, or lack GDAL, torch or the backend package. A quick probe (which
imports nothing heavy) names the missing piece; when nothing is missing the
backend is started and pinged. No QGIS import: the plugin runs this off the
main thread and shows the result in the panel.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from .client import BackendClient, BackendError
from .interpreter import CREATE_NO_WINDOW, SERVER_MODULE, InterpreterNotFound, LaunchSpec
from .python_probe import probe_python

RERUN = "Use 'Set up backend' in the SlimDiffSR panel: it rebuilds the environment from QGIS's own Python."
PING_TIMEOUT_S = 10.0
BACKEND_PACKAGE = SERVER_MODULE.partition(".")[0]


@dataclass(frozen=True)
class BackendStatus:
    """The answer of one check.

    missing: "" when ready, else "interpreter", "osgeo", "torch", "backend" or,
    when the pieces are there but the backend does not answer, the client's error kind.
    """

    ready: bool
    python: str
    missing: str
    message: str


def diagnose(spec: LaunchSpec) -> BackendStatus:
    """What the backend interpreter lacks, found without starting the backend; ready=True means nothing."""
    python = spec.argv[0]
    probe = probe_python(python, imports=("osgeo.gdal",), finds=("torch", BACKEND_PACKAGE), environ=spec.env,
                         cwd=spec.cwd, windows=spec.creationflags == CREATE_NO_WINDOW)
    if not probe.ran:
        return BackendStatus(False, python, "interpreter", f"The backend interpreter {python} cannot run: "
                                                           f"{probe.failure}. {RERUN}")
    if probe.import_error("osgeo.gdal"):
        return BackendStatus(False, python, "osgeo", f"The backend interpreter {python} has no GDAL Python bindings "
                                                     f"(osgeo: {probe.import_error('osgeo.gdal')}). {RERUN}")
    if probe.found.get("torch") is None:
        return BackendStatus(False, python, "torch", f"The backend interpreter {python} has no PyTorch. {RERUN}")
    if probe.found.get(BACKEND_PACKAGE) is None:
        return BackendStatus(False, python, "backend", f"The backend interpreter {python} does not have the SlimDiffSR "
                                                       f"backend package. {RERUN}")
    return BackendStatus(True, python, "", "")


def check_backend(client: BackendClient, launch: Callable[[], LaunchSpec]) -> BackendStatus:
    """Diagnose the interpreter `launch` names, then start `client`'s backend and ping it.

    The client is left running when it answers (it is the one the panel uses next).
    """
    try:
        spec = launch()
    except InterpreterNotFound as error:
        return BackendStatus(False, "", "interpreter", str(error))
    status = diagnose(spec)
    if not status.ready:
        return status
    try:
        client.start()
        client.ping(timeout=PING_TIMEOUT_S)
    except BackendError as error:
        return BackendStatus(False, spec.argv[0], error.kind, f"The backend in {spec.argv[0]} does not answer: {error}")
    return BackendStatus(True, spec.argv[0], "", f"The backend in {spec.argv[0]} answers.")


def check_new_backend(launch: Callable[[], LaunchSpec]) -> BackendStatus:
    """Check a backend that is not the panel's (one set-up just made) with a client of its own, stopped after."""
    client = BackendClient(launch)
    try:
        return check_backend(client, launch)
    finally:
        client.stop()
