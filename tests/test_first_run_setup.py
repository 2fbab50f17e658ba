"""First-run set-up for real: it builds on QGIS's Python whatever `python3` the PATH names first, and always recovers.

The machine plays a user's: Debian's /usr/bin/python3 has GDAL and is QGIS's
Python; a venv made WITHOUT system site packages from another interpreter (a
pyenv Python when there is one) has no GDAL and comes first on the PATH, and is
also what `sys.executable` says, as inside QGIS. Interpreters, venvs, pip, the
import check and the backend's ping/pong all run for real; the only stand-in is
PyTorch's download (see `torch_stand_in`), so the tests are offline and fast.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import osgeo
import pytest
from packaging.requirements import Requirement
from qgis.core import QgsApplication
from qgis.PyQt.QtGui import QGuiApplication

from plugin_fixtures import extract_into_profile, plugin_zip, wait_until
from plugin_fixtures import one_thread_backends  # noqa: F401 (a fixture, used by name)
from slimdiffsr_qgis.backend_check import check_new_backend, diagnose
from slimdiffsr_qgis.backend_setup import backend_package, run_steps, setup_steps
from slimdiffsr_qgis.interpreter import (QgisPython, backend_launch, clean_environment, first_run_venv,
                                         qgis_interpreter_candidates, venv_python)
from slimdiffsr_qgis.python_probe import choose_base_python
from slimdiffsr_qgis.setup_dialog import SetupContext, SetupDialog

DEBIAN_PYTHON = Path("/usr/bin/python3")
SETUP_BOUND_S = 300.0
# What the backend needs beyond the Python it is built on; their closure is what pip would download.
DOWNLOADED = ("torch", "safetensors", "tqdm")
STAND_IN = "slimdiffsr-test-torch"

pytestmark = pytest.mark.skipif(
    subprocess.run([str(DEBIAN_PYTHON), "-c", "import osgeo.gdal, numpy"], capture_output=True).returncode != 0,
    reason="needs Debian's Python with GDAL (python3-gdal), the Python QGIS uses on Debian")


def python_without_gdal(folder: Path) -> Path:
    """A venv without system site packages (so without GDAL) from a pyenv Python of QGIS's version, else Debian's."""
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    pyenv = sorted(Path("/root/.pyenv/versions").glob(f"{version}.*/bin/python3"))
    subprocess.run([str(pyenv[-1] if pyenv else DEBIAN_PYTHON), "-m", "venv", "--without-pip", str(folder)],
                   check=True, timeout=120)
    python = folder / "bin" / "python3"
    assert subprocess.run([str(python), "-c", "import osgeo"], capture_output=True).returncode != 0
    return python


def installed_closure(names: tuple[str, ...]) -> list[importlib.metadata.Distribution]:
    """The installed distributions `names` need, their dependencies included (extras and other platforms left out)."""
    found: dict[str, importlib.metadata.Distribution] = {}
    todo = list(names)
    while todo:
        try:
            dist = importlib.metadata.distribution(todo.pop())
        except importlib.metadata.PackageNotFoundError:
            continue
        key = dist.metadata["Name"].lower()
        if key in found:
            continue
        found[key] = dist
        for requirement in map(Requirement, dist.requires or []):
            if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
                todo.append(requirement.name)
    return list(found.values())


def torch_stand_in(folder: Path) -> str:
    """pip arguments for set-up's PyTorch step that pip satisfies offline, in a second, with the real torch.

    Downloading torch (about 200 MB, a minute of CPU to unpack) would make this test
    slow and network-bound, and a venv made from /usr/bin/python3 cannot see the
    project venv's torch. So the step installs, with the real pip from a local
    folder (`--no-index --find-links`), a tiny wheel whose only content is a .pth
    file exposing exactly what the download would have brought: the project venv's
    installed torch, safetensors and tqdm with their dependencies (symlinked, with
    their dist-info, so pip sees them as installed when it installs the backend),
    ahead of the venv's own packages as if pip had installed them there.
    Nothing else of the project venv is visible, in particular not the backend,
    which the next step must install from the plugin's wheel.
    """
    site = Path(importlib.metadata.distribution("torch").locate_file("")).resolve()
    exposed = folder / "exposed"
    exposed.mkdir(parents=True)
    for dist in installed_closure(DOWNLOADED):
        if Path(dist.locate_file("")).resolve() != site:
            continue  # from the system's site packages, which the new venv sees anyway
        for top in {Path(f).parts[0] for f in dist.files or [] if not str(f).startswith("..")}:
            if not (exposed / top).exists() and not top.endswith(".pth"):
                (exposed / top).symlink_to(site / top)
    wheels = folder / "wheels"
    wheels.mkdir()
    info = "slimdiffsr_test_torch-1.0.dist-info"
    # Ahead of the venv's own site-packages, where pip would have put them: torch needs a newer
    # setuptools than the one a new venv starts with, which a real download upgrades.
    path_line = ("import sys; sys.path.insert(min(i for i, p in enumerate(sys.path) if p.endswith('site-packages')), "
                 f"{str(exposed)!r})\n")
    files = {"slimdiffsr_test_torch.pth": path_line,
             f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {STAND_IN}\nVersion: 1.0\n",
             f"{info}/WHEEL": "Wheel-Version: 1.0\nGenerator: tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n"}
    files[f"{info}/RECORD"] = "".join(f"{name},,\n" for name in [*files, f"{info}/RECORD"])
    with zipfile.ZipFile(wheels / "slimdiffsr_test_torch-1.0-py3-none-any.whl", "w") as wheel:
        for name, text in files.items():
            wheel.writestr(name, text)
    return f"--no-index --find-links {wheels} {STAND_IN}"


def offline_environ(first_on_path: Path) -> dict[str, str]:
    """This process's environment with `first_on_path` first on the PATH and pip kept off every index."""
    return {**os.environ, "PATH": f"{first_on_path}{os.pathsep}{os.environ['PATH']}", "PIP_NO_INDEX": "1"}


def qgis_on_debian(executable: Path) -> QgisPython:
    """What QGIS on Debian knows about its Python when `executable` is the first python3 on the PATH."""
    return QgisPython(str(executable), sys.base_exec_prefix, (sys.version_info.major, sys.version_info.minor),
                      QgsApplication.prefixPath(), False, str(Path(osgeo.__file__).parent))


def ping_pong(python: Path, cwd: Path, environ: dict[str, str]) -> tuple[dict, dict]:
    """Start `python -m backend.server` and exchange one ping for its pong; returns (hello, pong)."""
    server = subprocess.Popen([str(python), "-m", "backend.server"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, cwd=cwd, env=clean_environment(environ), text=True)
    try:
        hello = json.loads(server.stdout.readline())
        server.stdin.write(json.dumps({"id": 1, "op": "ping"}) + "\n")
        server.stdin.flush()
        pong = json.loads(server.stdout.readline())
        server.stdin.write(json.dumps({"id": 2, "op": "shutdown"}) + "\n")
        server.stdin.flush()
        server.wait(timeout=30)
    finally:
        if server.poll() is None:
            server.kill()
        server.communicate()
    return hello, pong


def same_file(a: str, b: Path) -> bool:
    return os.path.realpath(a) == os.path.realpath(b)


def test_set_up_builds_on_qgis_python_not_on_the_first_python3_of_the_path_and_the_backend_answers_a_ping(
        qgis_app, tmp_path, one_thread_backends):
    wrong = python_without_gdal(tmp_path / "pyenv-like")
    environ = offline_environ(wrong.parent)
    assert same_file(shutil.which("python3", path=environ["PATH"]), wrong), "the PATH's python3 has no GDAL"
    profile = tmp_path / "profile"
    plugin_dir = extract_into_profile(plugin_zip(tmp_path / "dist"), profile) / "slimdiffsr_qgis"
    venv = first_run_venv(profile)
    context = SetupContext(
        qgis=qgis_on_debian(wrong), venv_dir=venv, package=backend_package(plugin_dir), system="Linux", gpus=[],
        custom_requirement=torch_stand_in(tmp_path / "stand-in"), proxy=None, environ=environ, cwd=str(profile),
        verify=lambda python: check_new_backend(lambda: backend_launch(python, plugin_dir, False, environ,
                                                                       str(profile))))
    succeeded: list[str] = []
    dialog = SetupDialog(context, succeeded.append)
    assert same_file(dialog.choice.python, DEBIAN_PYTHON) and dialog.choice.gdal_version
    assert "GDAL" in dialog.interpreter_label.text() and "PyTorch as set" in dialog.plan_label.text()
    dialog.start()
    wait_until(lambda: dialog.task is None, SETUP_BOUND_S, "first-run set-up")
    log = dialog.log_view.toPlainText()
    python = venv_python(venv, windows=False)
    assert succeeded == [str(python)], f"{dialog.status_label.text()}\n{log[-3000:]}"
    assert dialog.progress_bar.value() == 100 and "--clear --system-site-packages" in log
    dialog.copy_log()
    assert QGuiApplication.clipboard().text() == log

    home = dict(line.split(" = ", 1) for line in (venv / "pyvenv.cfg").read_text().splitlines() if " = " in line)
    assert same_file(home["home"], DEBIAN_PYTHON.parent) and home["include-system-site-packages"] == "true"
    hello, pong = ping_pong(python, profile, environ)
    assert hello["event"] == "hello" and hello["environment"]["gdal"], "QGIS's GDAL through system site packages"
    assert pong == {"id": 1, "event": "pong"}
    located = subprocess.run([str(python), "-c", "import backend; print(backend.__file__)"], capture_output=True,
                             text=True, cwd=profile, env=clean_environment(environ), timeout=60)
    assert located.stdout.startswith(str(venv)), "the backend comes from the plugin's wheel"


def test_a_venv_whose_interpreter_link_is_dead_is_not_set_up_and_running_set_up_again_rebuilds_it(
        tmp_path, one_thread_backends):
    profile = tmp_path / "profile"
    venv = first_run_venv(profile)
    python_without_gdal(venv)  # what the PATH's python3 made: a venv without GDAL...
    for link in (venv / "bin").glob("python*"):  # ...whose Python was then removed
        link.unlink()
        link.symlink_to(tmp_path / "removed-python" / "bin" / "python3")
    python = venv_python(venv, windows=False)
    assert python.is_symlink() and not python.exists(), "the venv's interpreter links to a Python that is gone"
    environ = offline_environ(tmp_path)
    plugin_dir = extract_into_profile(plugin_zip(tmp_path / "dist"), profile) / "slimdiffsr_qgis"

    def launch():
        return backend_launch(str(python), plugin_dir, False, environ, str(profile))

    broken = check_new_backend(launch)
    assert not broken.ready and broken.missing == "interpreter"
    assert "no longer exists" in broken.message and "Set up backend" in broken.message

    qgis = qgis_on_debian(DEBIAN_PYTHON)
    base = choose_base_python(qgis_interpreter_candidates(qgis), qgis, environ, str(profile))
    steps = setup_steps(base.python, venv, backend_package(plugin_dir),
                        torch_stand_in(tmp_path / "stand-in").split(), False)
    log: list[str] = []
    run_steps(steps, log.append, environ, str(profile))
    assert python.exists() and same_file(str(python), Path(base.python))
    fixed = check_new_backend(launch)
    assert fixed.ready, fixed.message + "\n" + "\n".join(log[-40:])


def test_candidates_are_run_and_each_refusal_says_why(tmp_path):
    wrong = python_without_gdal(tmp_path / "nogdal")
    not_python = tmp_path / "python3.11"
    not_python.write_text("#!/bin/sh\necho 'I am a shim'\nexit 3\n")
    not_python.chmod(0o755)
    qgis = qgis_on_debian(wrong)
    choice = choose_base_python([wrong, not_python, tmp_path / "gone" / "python3", DEBIAN_PYTHON], qgis)
    assert same_file(choice.python, DEBIAN_PYTHON)
    reasons = dict(choice.refused)
    assert "no GDAL Python bindings" in reasons[str(wrong)] and "osgeo" in reasons[str(wrong)]
    assert "does not run as Python" in reasons[str(not_python)]
    assert reasons[str(tmp_path / "gone" / "python3")] == "it does not exist"
    other = sorted(p for p in Path("/root/.pyenv/versions").glob("3.*/bin/python3")
                   if not p.parent.parent.name.startswith(f"{sys.version_info.major}.{sys.version_info.minor}."))
    nothing = choose_base_python([wrong, *other[-1:]], qgis)
    assert nothing.python == "" and "Choose a Python interpreter" in nothing.explanation()
    if other:
        assert "but QGIS runs Python" in dict(nothing.refused)[str(other[-1])]


def test_the_diagnosis_names_what_the_backend_interpreter_lacks(tmp_path):
    profile = tmp_path / "profile"
    profile.mkdir()
    wrong = python_without_gdal(tmp_path / "nogdal")
    for python, missing in ((wrong, "osgeo"), (DEBIAN_PYTHON, "torch")):
        status = diagnose(backend_launch(str(python), tmp_path / "installed" / "slimdiffsr_qgis", False, os.environ,
                                         str(profile)))
        assert not status.ready and status.missing == missing, status.message
    assert "no GDAL Python bindings" in diagnose(backend_launch(str(wrong), tmp_path, False, os.environ,
                                                                str(profile))).message


def test_the_dialog_lists_each_refused_candidate_offers_a_chooser_and_weighs_cpu_against_cuda(qgis_app, tmp_path):
    wrong = python_without_gdal(tmp_path / "nogdal")
    qgis = QgisPython(str(wrong), str(wrong.parent.parent), (sys.version_info.major, sys.version_info.minor),
                      str(tmp_path / "no-qgis-here"), False, str(Path(osgeo.__file__).parent))
    context = SetupContext(qgis=qgis, venv_dir=tmp_path / "venv", package="unused", system="Linux",
                           gpus=["NVIDIA GeForce RTX 3090"], custom_requirement="", proxy=None,
                           environ=dict(os.environ), cwd=str(tmp_path), verify=lambda python: pytest.fail("not run"))
    dialog = SetupDialog(context, lambda python: pytest.fail("not run"))
    refused = dialog.interpreter_label.text()
    assert "QGIS's own Python was not found" in refused and f"{wrong}: it has no GDAL Python bindings" in refused
    assert not dialog.start_button.isEnabled(), "nothing is created on a Python without GDAL"

    dialog.interpreter_widget.setFilePath(str(DEBIAN_PYTHON))
    assert dialog.interpreter_label.text().startswith(f"Using {DEBIAN_PYTHON} (GDAL ")
    assert dialog.start_button.isEnabled()
    assert "CPU build" in dialog.plan_label.text() and not dialog.cuda_box.isHidden()
    assert "RTX 3090" in dialog.cuda_box.text() and "GiB" in dialog.cuda_box.text() and "MiB" in dialog.cuda_box.text()
    dialog.cuda_box.setChecked(True)
    assert "CUDA build for NVIDIA GeForce RTX 3090" in dialog.plan_label.text()
    assert dialog.plan().torch_args == ["torch==2.13.0"]
