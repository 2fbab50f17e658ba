"""First-run set-up for real: a venv in a fresh profile from Debian's Python, torch and the zip's backend, hello.

Slow (it installs the torch wheel, about a minute or two): one test does it all,
through the same dialog and background task a QGIS user sees.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from qgis.PyQt.QtGui import QGuiApplication

from plugin_fixtures import extract_into_profile, plugin_zip, wait_until
from slimdiffsr_qgis.backend_setup import backend_package, setup_steps
from slimdiffsr_qgis.client import BackendClient
from slimdiffsr_qgis.interpreter import backend_launch, first_run_venv, venv_python
from slimdiffsr_qgis.settings import DEFAULT_TORCH_REQUIREMENT
from slimdiffsr_qgis.setup_dialog import SetupDialog

DEBIAN_PYTHON = "/usr/bin/python3"
SETUP_BOUND = 540.0


def has_torch(python: str) -> bool:
    return subprocess.run([python, "-c", "import torch"], capture_output=True).returncode == 0


@pytest.mark.skipif(not Path(DEBIAN_PYTHON).is_file(), reason="needs Debian's Python with GDAL (python3-gdal)")
def test_set_up_makes_a_venv_in_the_profile_installs_torch_and_the_zip_backend_which_says_hello(
        qgis_app, tmp_path, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    torch_before = has_torch(DEBIAN_PYTHON)
    profile = tmp_path / "profile"
    plugin_dir = extract_into_profile(plugin_zip(tmp_path / "dist"), profile) / "slimdiffsr_qgis"
    venv = first_run_venv(profile)
    python = venv_python(venv, windows=False)
    steps = setup_steps(DEBIAN_PYTHON, venv, backend_package(plugin_dir), DEFAULT_TORCH_REQUIREMENT, windows=False)
    assert steps[2].argv[-1].startswith(str(plugin_dir / "wheels"))

    succeeded: list[str] = []
    dialog = SetupDialog(steps, python, str(profile), False, succeeded.append)
    dialog.start()
    wait_until(lambda: dialog.task is None, SETUP_BOUND, "first-run set-up")
    log = dialog.log_view.toPlainText()
    assert succeeded == [str(python)], f"{dialog.status_label.text()}\n{log[-3000:]}"
    assert dialog.progress_bar.value() == 100
    assert "torch 2.13.0" in log and "--system-site-packages" in log
    dialog.copy_log()
    assert QGuiApplication.clipboard().text() == log

    assert venv.is_dir() and venv.parent == profile / "slimdiffsr"
    client = BackendClient(lambda: backend_launch(str(python), plugin_dir, False, os.environ, str(profile)),
                           hello_timeout=120.0)
    try:
        hello = client.start()
        assert hello["event"] == "hello" and hello["environment"]["torch"].startswith("2.13.0")
        info = client.info()
        assert info["environment"]["gdal"], "the venv uses the system's GDAL through system site packages"
    finally:
        client.stop()
    located = subprocess.run([str(python), "-c", "import backend; print(backend.__file__)"], capture_output=True,
                             text=True, cwd=profile, timeout=60)
    assert located.stdout.startswith(str(venv)), "the backend comes from the zip's wheel, not the checkout"
    assert has_torch(DEBIAN_PYTHON) == torch_before, "nothing was installed into the base Python"
