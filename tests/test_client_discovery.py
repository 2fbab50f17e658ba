"""Finding the backend interpreter, its launch command and its clean environment, as pure functions.

The Windows and first-run branches cannot run here, so they are checked on paths.
"""

from __future__ import annotations

from pathlib import Path, PureWindowsPath

import pytest

from slimdiffsr_qgis.backend_setup import SetupError, backend_package, explain_failure, setup_steps
from slimdiffsr_qgis.interpreter import (CREATE_NO_WINDOW, InterpreterNotFound, QgisPython, backend_launch,
                                         clean_environment, find_backend_python, first_run_venv,
                                         qgis_interpreter_candidates, venv_python)

PLUGIN_IN_CHECKOUT = Path(__file__).resolve().parent.parent / "slimdiffsr_qgis"
# QGIS on Debian run by a user whose PATH starts with pyenv: sys.executable is the shim.
DEBIAN = QgisPython("/home/u/.pyenv/shims/python3", "/usr", (3, 11), "/usr", False,
                    "/usr/lib/python3/dist-packages/osgeo")
OSGEO4W = QgisPython("C:/OSGeo4W/bin/qgis-bin.exe", "C:/OSGeo4W/apps/Python312", (3, 12), "C:/OSGeo4W/apps/qgis",
                     True)
STANDALONE = QgisPython("C:/Program Files/QGIS 3.34.4/bin/qgis-bin.exe", "C:/Program Files/QGIS 3.34.4/apps/Python312",
                        (3, 12), "C:/Program Files/QGIS 3.34.4/apps/qgis", True)
FLATPAK = QgisPython("/usr/bin/python3", "/usr", (3, 11), "/app", False)
MACOS = QgisPython("/Applications/QGIS-LTR.app/Contents/MacOS/QGIS",
                   "/Applications/QGIS-LTR.app/Contents/Frameworks/Python.framework/Versions/3.9", (3, 9),
                   "/Applications/QGIS-LTR.app/Contents/MacOS", False)


def only(*existing):
    """An `exists` that knows exactly these paths."""
    known = {str(p) for p in existing}
    return lambda path: str(path) in known


def test_the_configured_interpreter_wins_even_when_it_does_not_exist(tmp_path):
    found = find_backend_python("/opt/my/python", tmp_path, tmp_path / "plugins" / "slimdiffsr_qgis", DEBIAN,
                                exists=only())
    assert found == "/opt/my/python"


def test_the_first_run_venv_comes_before_the_checkout_venv_and_qgis_python(tmp_path):
    venv = venv_python(first_run_venv(tmp_path / "profile"), windows=False)
    checkout = PLUGIN_IN_CHECKOUT.parent / ".venv" / "bin" / "python"
    found = find_backend_python("", tmp_path / "profile", PLUGIN_IN_CHECKOUT, DEBIAN,
                                exists=only(venv, checkout, "/usr/bin/python3.11"))
    assert found == str(venv)
    assert venv == tmp_path / "profile" / "slimdiffsr" / "venv" / "bin" / "python"


def test_a_checkout_uses_its_own_venv(tmp_path):
    checkout = PLUGIN_IN_CHECKOUT.parent / ".venv" / "bin" / "python"
    found = find_backend_python("", tmp_path, PLUGIN_IN_CHECKOUT, DEBIAN, exists=only(checkout, "/usr/bin/python3.11"))
    assert found == str(checkout)


def test_an_installed_plugin_falls_back_to_qgis_own_python_not_the_first_python3_on_the_path(tmp_path):
    installed = tmp_path / "profile" / "python" / "plugins" / "slimdiffsr_qgis"
    installed.mkdir(parents=True)
    found = find_backend_python("", tmp_path / "profile", installed, DEBIAN,
                                exists=only("/usr/bin/python3.11", DEBIAN.executable))
    assert found == "/usr/bin/python3.11"


def test_qgis_python_is_looked_for_in_every_install_layout_and_never_as_the_qgis_binary():
    expected = {
        "debian": (DEBIAN, "/usr/bin/python3.11"),
        "flatpak": (FLATPAK, "/usr/bin/python3.11"),
        "osgeo4w": (OSGEO4W, "C:/OSGeo4W/apps/Python312/python.exe"),
        "standalone": (STANDALONE, "C:/Program Files/QGIS 3.34.4/apps/Python312/python.exe"),
        "macos": (MACOS, "/Applications/QGIS-LTR.app/Contents/Frameworks/Python.framework/Versions/3.9/bin/python3.9"),
    }
    for layout, (qgis, first) in expected.items():
        candidates = [str(c) for c in qgis_interpreter_candidates(qgis)]
        assert candidates[0] == first, layout
        assert not [c for c in candidates if c.endswith(("qgis-bin.exe", "/QGIS"))], layout
    assert "/Applications/QGIS-LTR.app/Contents/MacOS/bin/python3" in map(str, qgis_interpreter_candidates(MACOS))
    assert str(qgis_interpreter_candidates(DEBIAN)[-1]) == DEBIAN.executable, "the PATH's python3 is tried last"


def test_on_windows_python_exe_of_qgis_is_used(tmp_path):
    python = Path("C:/Program Files/QGIS 3.34.4/apps/Python312") / "python.exe"
    found = find_backend_python("", tmp_path, tmp_path / "plugins" / "slimdiffsr_qgis", STANDALONE, exists=only(python))
    assert PureWindowsPath(found) == PureWindowsPath(str(python))


def test_on_windows_the_first_run_venv_has_scripts_python_exe(tmp_path):
    venv = first_run_venv(tmp_path)
    assert venv_python(venv, windows=True) == venv / "Scripts" / "python.exe"


def test_no_interpreter_anywhere_is_an_error_that_says_where_it_looked(tmp_path):
    with pytest.raises(InterpreterNotFound, match="Set up backend") as caught:
        find_backend_python("", tmp_path, tmp_path / "slimdiffsr_qgis", OSGEO4W, exists=only())
    assert "python.exe" in str(caught.value) and "venv" in str(caught.value)


def test_the_backend_starts_without_qgis_python_variables_and_unbuffered():
    env = clean_environment({"PATH": "/usr/bin", "PYTHONPATH": "/usr/share/qgis/python", "PYTHONHOME": "/qgis",
                             "QGIS_PREFIX_PATH": "/usr", "GDAL_DATA": "/usr/share/gdal"})
    assert env["PATH"] == "/usr/bin" and env["GDAL_DATA"] == "/usr/share/gdal"
    assert not {"PYTHONPATH", "PYTHONHOME", "QGIS_PREFIX_PATH"} & set(env)
    assert env["PYTHONUNBUFFERED"] == "1"


def test_launch_runs_the_server_module_from_a_checkout_root_or_a_neutral_folder(tmp_path):
    from_checkout = backend_launch("/py", PLUGIN_IN_CHECKOUT, False, {}, str(tmp_path))
    assert from_checkout.argv == ["/py", "-m", "backend.server"]
    assert from_checkout.cwd == str(PLUGIN_IN_CHECKOUT.parent) and from_checkout.creationflags == 0
    installed = backend_launch("C:/venv/Scripts/python.exe", tmp_path / "slimdiffsr_qgis", True, {}, str(tmp_path))
    assert installed.cwd == str(tmp_path) and installed.creationflags == CREATE_NO_WINDOW


def test_set_up_rebuilds_a_system_site_venv_then_installs_torch_and_the_backend(tmp_path):
    steps = setup_steps("/usr/bin/python3", tmp_path / "venv", "/plugin/wheels/slimdiffsr-0.1.0-py3-none-any.whl",
                        ["torch==2.13.0", "--index-url", "https://example.invalid/cpu"], False,
                        {"PIP_PROXY": "http://u:p@proxy.invalid:3128"})
    create, torch_step, backend_step, check = steps
    assert create.argv == ["/usr/bin/python3", "-m", "venv", "--clear", "--system-site-packages",
                           str(tmp_path / "venv")]
    assert torch_step.argv[-3:] == ["torch==2.13.0", "--index-url", "https://example.invalid/cpu"]
    assert torch_step.skip_if_succeeds == [str(tmp_path / "venv" / "bin" / "python"), "-c", "import torch"]
    assert backend_step.argv[-1].endswith(".whl") and backend_step.argv[:4] == [
        str(tmp_path / "venv" / "bin" / "python"), "-m", "pip", "install"]
    assert torch_step.env == backend_step.env == {"PIP_PROXY": "http://u:p@proxy.invalid:3128"}
    assert not [a for a in torch_step.argv + backend_step.argv if "proxy" in a], "the password stays off the log"
    assert "import torch, osgeo.gdal, backend.server" in check.argv[-1]
    assert [s.title for s in setup_steps("/usr/bin/python3", tmp_path, "pkg", [], False)] == [
        "Create the environment", "Install the SlimDiffSR backend", "Check the backend"]


def test_pip_failures_are_explained_in_words_with_what_to_check():
    ssl = ["WARNING: Retrying ... after connection broken by 'SSLError(SSLCertVerificationError(1, "
           "'[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed'))'"]
    assert "certificate" in explain_failure(ssl) and "Options > Network" in explain_failure(ssl)
    proxy = ["WARNING: Retrying ... 'ProxyError('Cannot connect to proxy.', OSError('Tunnel connection failed: "
             "407 Proxy Authentication Required'))'"]
    assert "proxy host, port, user and password" in explain_failure(proxy)
    offline = ["Could not fetch URL https://example.invalid/simple/torch/: There was a problem confirming the ssl"]
    assert "could not reach the package index" in explain_failure(offline)
    assert "python3-venv" in explain_failure(["Error: ensurepip is not available"])
    conflict = ["ERROR: Could not find a version that satisfies the requirement setuptools>=77.0.3 (from torch) "
                "(from versions: none)", "ERROR: No matching distribution found for setuptools>=77.0.3"]
    assert "no release of setuptools>=77.0.3" in explain_failure(conflict)
    assert "GDAL" in explain_failure(["ModuleNotFoundError: No module named 'osgeo'"])
    assert explain_failure(["something else entirely"]) == ""


def test_the_backend_package_is_the_zip_wheel_else_the_checkout(tmp_path):
    plugin = tmp_path / "slimdiffsr_qgis"
    (plugin / "wheels").mkdir(parents=True)
    with pytest.raises(SetupError, match="reinstall the plugin"):
        backend_package(plugin)
    wheel = plugin / "wheels" / "slimdiffsr-0.1.0-py3-none-any.whl"
    wheel.write_bytes(b"")
    assert backend_package(plugin) == str(wheel)
    assert backend_package(PLUGIN_IN_CHECKOUT) == str(PLUGIN_IN_CHECKOUT.parent)
