"""Finding the backend interpreter, its launch command and its clean environment, as pure functions.

The Windows and first-run branches cannot run here, so they are checked on paths.
"""

from __future__ import annotations

from pathlib import Path, PureWindowsPath

import pytest

from slimdiffsr_qgis.backend_setup import SetupError, backend_package, qgis_python, setup_steps
from slimdiffsr_qgis.interpreter import (CREATE_NO_WINDOW, InterpreterNotFound, backend_is_set_up, backend_launch,
                                         clean_environment, find_backend_python, first_run_venv, venv_python)

PLUGIN_IN_CHECKOUT = Path(__file__).resolve().parent.parent / "slimdiffsr_qgis"


def only(*existing):
    """An `exists` that knows exactly these paths."""
    known = {str(p) for p in existing}
    return lambda path: str(path) in known


def test_the_configured_interpreter_wins_even_when_it_does_not_exist(tmp_path):
    found = find_backend_python("/opt/my/python", tmp_path, tmp_path / "plugins" / "slimdiffsr_qgis",
                                "/usr/bin/qgis", "/usr", windows=False, exists=only(), which=lambda name: None)
    assert found == "/opt/my/python"


def test_the_first_run_venv_comes_before_the_checkout_venv_and_python3(tmp_path):
    venv = venv_python(first_run_venv(tmp_path / "profile"), windows=False)
    checkout = PLUGIN_IN_CHECKOUT.parent / ".venv" / "bin" / "python"
    found = find_backend_python("", tmp_path / "profile", PLUGIN_IN_CHECKOUT, "/usr/bin/qgis", "/usr", False,
                                exists=only(venv, checkout), which=lambda name: "/usr/bin/python3")
    assert found == str(venv)
    assert venv == tmp_path / "profile" / "slimdiffsr" / "venv" / "bin" / "python"


def test_a_checkout_uses_its_own_venv(tmp_path):
    checkout = PLUGIN_IN_CHECKOUT.parent / ".venv" / "bin" / "python"
    found = find_backend_python("", tmp_path, PLUGIN_IN_CHECKOUT, "/usr/bin/qgis", "/usr", False,
                                exists=only(checkout), which=lambda name: "/usr/bin/python3")
    assert found == str(checkout)


def test_an_installed_plugin_falls_back_to_python3_on_the_path(tmp_path):
    installed = tmp_path / "profile" / "python" / "plugins" / "slimdiffsr_qgis"
    installed.mkdir(parents=True)
    found = find_backend_python("", tmp_path / "profile", installed, "/usr/bin/qgis", "/usr", False,
                                exists=only(), which=lambda name: "/usr/bin/python3" if name == "python3" else None)
    assert found == "/usr/bin/python3"


def test_on_windows_python_exe_beside_qgis_is_used_and_python3_is_never_searched(tmp_path):
    qgis_bin = "C:/Program Files/QGIS 3.34/bin/qgis-bin.exe"
    beside = Path("C:/Program Files/QGIS 3.34/bin") / "python.exe"
    searched = []
    found = find_backend_python("", tmp_path, tmp_path / "plugins" / "slimdiffsr_qgis", qgis_bin,
                                "C:/Program Files/QGIS 3.34/apps/Python312", True, exists=only(beside),
                                which=lambda name: searched.append(name))
    assert found == str(beside) and searched == []


def test_on_windows_the_first_run_venv_has_scripts_python_exe(tmp_path):
    venv = first_run_venv(tmp_path)
    assert venv_python(venv, windows=True) == venv / "Scripts" / "python.exe"


def test_no_interpreter_anywhere_is_an_error_that_says_where_it_looked(tmp_path):
    with pytest.raises(InterpreterNotFound, match="Set up backend") as caught:
        find_backend_python("", tmp_path, tmp_path / "slimdiffsr_qgis", "C:/QGIS/bin/qgis-bin.exe", "C:/QGIS/apps/Python312",
                            True, exists=only(), which=lambda name: None)
    assert "python.exe" in str(caught.value) and "venv" in str(caught.value)


def test_set_up_is_offered_until_an_interpreter_is_chosen_or_made(tmp_path):
    installed = tmp_path / "plugins" / "slimdiffsr_qgis"
    assert not backend_is_set_up("", tmp_path, installed, False, exists=only())
    assert backend_is_set_up("/opt/python", tmp_path, installed, False, exists=only())
    made = venv_python(first_run_venv(tmp_path), False)
    assert backend_is_set_up("", tmp_path, installed, False, exists=only(made))


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


def test_qgis_python_is_found_beside_a_qgis_binary():
    assert qgis_python("/usr/bin/python3.11", "/usr", (3, 11), False) == "/usr/bin/python3.11"
    windows = qgis_python("C:/QGIS/bin/qgis-bin.exe", "C:/QGIS/apps/Python312", (3, 12), True,
                          exists=only(Path("C:/QGIS/apps/Python312") / "python.exe"))
    assert PureWindowsPath(windows) == PureWindowsPath("C:/QGIS/apps/Python312/python.exe")
    mac = qgis_python("/Applications/QGIS.app/Contents/MacOS/QGIS", "/Applications/QGIS.app/Contents/Frameworks",
                      (3, 9), False, exists=only(Path("/Applications/QGIS.app/Contents/MacOS/python3.9")))
    assert mac == "/Applications/QGIS.app/Contents/MacOS/python3.9"
    with pytest.raises(SetupError, match="not found"):
        qgis_python("/usr/bin/qgis", "/nowhere", (3, 11), False, exists=only())


def test_set_up_makes_a_system_site_venv_then_installs_torch_and_the_backend(tmp_path):
    steps = setup_steps("/usr/bin/python3", tmp_path / "venv", "/plugin/wheels/slimdiffsr-0.1.0-py3-none-any.whl",
                        "torch==2.13.0 --index-url https://example.invalid/cu121", False)
    create, torch_step, backend_step, check = steps
    assert create.argv == ["/usr/bin/python3", "-m", "venv", "--system-site-packages", str(tmp_path / "venv")]
    assert torch_step.argv[-3:] == ["torch==2.13.0", "--index-url", "https://example.invalid/cu121"]
    assert torch_step.skip_if_succeeds == [str(tmp_path / "venv" / "bin" / "python"), "-c", "import torch"]
    assert backend_step.argv[-1].endswith(".whl") and backend_step.argv[:4] == [
        str(tmp_path / "venv" / "bin" / "python"), "-m", "pip", "install"]
    assert "backend.server" in check.argv[-1]


def test_the_backend_package_is_the_zip_wheel_else_the_checkout(tmp_path):
    plugin = tmp_path / "slimdiffsr_qgis"
    (plugin / "wheels").mkdir(parents=True)
    with pytest.raises(SetupError, match="reinstall the plugin"):
        backend_package(plugin)
    wheel = plugin / "wheels" / "slimdiffsr-0.1.0-py3-none-any.whl"
    wheel.write_bytes(b"")
    assert backend_package(plugin) == str(wheel)
    assert backend_package(PLUGIN_IN_CHECKOUT) == str(PLUGIN_IN_CHECKOUT.parent)
