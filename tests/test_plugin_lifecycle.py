"""Loading and unloading the plugin: from the checkout via classFactory, and from the zip via QGIS's own loader."""

from __future__ import annotations

import configparser
import dataclasses
import sys
import threading
import time
import zipfile
from pathlib import Path

import pytest
import qgis.utils
from qgis.core import QgsApplication
from qgis.PyQt.QtCore import QCoreApplication, QEvent
from qgis.PyQt.QtWidgets import QDockWidget

from plugin_fixtures import REPO, backend_python, extract_into_profile, plugin_zip, wait_until
from plugin_fixtures import one_thread_backends  # noqa: F401 (a fixture, used by name)
from slimdiffsr_qgis import classFactory
from slimdiffsr_qgis.settings import load_settings, save_settings

BACKEND_THREADS = {"slimdiffsr-events", "slimdiffsr-stderr"}
CHECK_BOUND_S = 120.0
REQUIRED_METADATA = ("name", "qgisMinimumVersion", "description", "about", "version", "author", "email",
                     "repository", "tracker", "homepage", "tags", "category", "icon", "hasProcessingProvider",
                     "qgisMaximumVersion")


@pytest.fixture
def real_docking(qgis_iface, monkeypatch):
    """pytest-qgis's interface ignores dock widgets; dock them into its real main window instead (hidden until
    the test shows it, as QGIS's window is while plugins load)."""
    window = qgis_iface.mainWindow()
    monkeypatch.setattr(qgis_iface, "addDockWidget", lambda area, dock: window.addDockWidget(area, dock))
    monkeypatch.setattr(qgis_iface, "removeDockWidget", lambda dock: window.removeDockWidget(dock))
    yield window
    window.hide()


@pytest.fixture(scope="module")
def zip_path(tmp_path_factory) -> Path:
    return plugin_zip(tmp_path_factory.mktemp("dist"))


def docks(window) -> list[QDockWidget]:
    QCoreApplication.sendPostedEvents(None, QEvent.DeferredDelete)
    return [d for d in window.findChildren(QDockWidget) if d.objectName() == "SlimDiffSRDock"]


def test_class_factory_adds_dock_menu_and_provider_and_unload_removes_all(qgis_iface, qgis_processing,
                                                                          real_docking, one_thread_backends):
    registry = QgsApplication.processingRegistry()
    plugin = classFactory(qgis_iface)
    plugin.initGui()
    assert registry.providerById("slimdiffsr") is not None
    assert registry.algorithmById("slimdiffsr:superresolve") is not None
    assert docks(real_docking) == [plugin.dock] and plugin.dock.isVisibleTo(real_docking)
    assert plugin.dock.setup_label.text() == "Checking the backend..."
    QCoreApplication.processEvents()
    assert plugin.client().starts == 0, "no backend before the panel is shown"

    real_docking.show()
    assert not plugin.dock.setup_box.isHidden(), "the Backend box shows until the backend answers a ping"
    wait_until(lambda: plugin.backend_status is not None, CHECK_BOUND_S, "the backend check")
    assert plugin.backend_status.ready, plugin.backend_status.message
    assert plugin.dock.setup_box.isHidden(), "the checkout's venv answers: no set-up offered"
    menu_calls = qgis_iface.addPluginToRasterMenu.call_args_list
    assert menu_calls and menu_calls[-1].args == ("&SlimDiffSR", plugin.action)
    assert plugin.client().ping()["event"] == "pong"
    process = plugin.client()._process
    assert BACKEND_THREADS <= {t.name for t in threading.enumerate()}

    plugin.unload()
    assert registry.providerById("slimdiffsr") is None
    assert docks(real_docking) == []
    assert qgis_iface.removePluginRasterMenu.call_args_list[-1].args[0] == "&SlimDiffSR"
    assert process.poll() is not None, "the backend process is still running"
    assert not BACKEND_THREADS & {t.name for t in threading.enumerate()}, "reader threads leaked"


def test_unloading_during_a_backend_check_cuts_the_backend_start_short(qgis_iface, qgis_processing, tmp_path):
    # An interpreter that passes the check's probe but whose backend never says hello, as a slow first
    # PyTorch import would for a while: the check then waits up to the client's hello timeout.
    silent = tmp_path / "python"
    silent.write_text(f'#!/bin/sh\ncase "$*" in *backend.server*) exec sleep 600;; esac\nexec {backend_python()} "$@"\n')
    silent.chmod(0o755)
    before = load_settings()
    plugin = classFactory(qgis_iface)
    plugin.initGui()
    try:
        client = plugin.client()
        plugin.dock.python_widget.setFilePath(str(silent))
        wait_until(lambda: client._process is not None, CHECK_BOUND_S, "the check to start the backend")
        starting = client._process
        assert client.hello is None and plugin.dock.setup_label.text() == "Checking the backend..."
        began = time.monotonic()
        plugin.unload()
        assert time.monotonic() - began < client._hello_timeout / 4, "unload waited for the backend's hello"
        assert starting.poll() is not None, "the starting backend was stopped"
        wait_until(lambda: "slimdiffsr-check" not in {t.name for t in threading.enumerate()}, CHECK_BOUND_S,
                   "the check to end")
        assert not BACKEND_THREADS & {t.name for t in threading.enumerate()}, "reader threads leaked"
        assert client.starts == 1 and not client.is_running()
    finally:
        save_settings(dataclasses.replace(load_settings(), backend_python=before.backend_python))


def test_the_zip_has_one_top_folder_with_metadata_icons_license_and_the_backend_wheel(zip_path):
    with zipfile.ZipFile(zip_path) as archive:
        names = archive.namelist()
        metadata = configparser.ConfigParser()
        metadata.read_string(archive.read("slimdiffsr_qgis/metadata.txt").decode("utf-8"))
    assert {name.split("/")[0] for name in names} == {"slimdiffsr_qgis"}
    general = metadata["general"]
    assert [key for key in REQUIRED_METADATA if not general.get(key)] == []
    assert general["qgisMinimumVersion"] == "3.22" and general["category"] == "Raster"
    assert general["hasProcessingProvider"] == "yes"
    assert f"slimdiffsr_qgis/{general['icon']}" in names
    assert "slimdiffsr_qgis/LICENSE" in names and "slimdiffsr_qgis/__init__.py" in names
    assert not [name for name in names if "__pycache__" in name]
    (wheel_name,) = [name for name in names if name.startswith("slimdiffsr_qgis/wheels/") and name.endswith(".whl")]
    with zipfile.ZipFile(zip_path) as archive, archive.open(wheel_name) as wheel_file:
        wheel_names = zipfile.ZipFile(wheel_file).namelist()
    assert "backend/server.py" in wheel_names and "backend/engine.py" in wheel_names
    shipped = [p.relative_to(REPO / "resources").as_posix() for p in (REPO / "resources").rglob("*")
               if p.is_file() and p.parts[-2] in ("weights", "sample") and not p.name.endswith(".aux.xml")]
    assert shipped, "the repository ships resources"
    missing = [name for name in shipped if f"slimdiffsr_resources/{name}" not in wheel_names]
    assert missing == [], "default weights and the sample raster travel inside the wheel"


def test_the_zip_in_a_fresh_profile_is_found_and_started_by_qgis_plugin_loader(qgis_iface, qgis_processing,
                                                                               real_docking, zip_path, tmp_path,
                                                                               monkeypatch):
    plugins = extract_into_profile(zip_path, tmp_path / "profile")
    checkout_modules = {name: module for name, module in sys.modules.items()
                        if name == "slimdiffsr_qgis" or name.startswith("slimdiffsr_qgis.")}
    for name in checkout_modules:
        del sys.modules[name]
    monkeypatch.syspath_prepend(str(plugins))
    monkeypatch.setattr(qgis.utils, "iface", qgis_iface)
    monkeypatch.setattr(qgis.utils, "plugin_paths", [str(plugins)])
    monkeypatch.setattr(qgis.utils, "available_plugins", [])
    monkeypatch.setattr(qgis.utils, "plugins_metadata_parser", {})
    try:
        qgis.utils.updateAvailablePlugins()
        assert "slimdiffsr_qgis" in qgis.utils.available_plugins
        assert qgis.utils.pluginMetadata("slimdiffsr_qgis", "hasProcessingProvider") == "yes"
        assert qgis.utils.loadPlugin("slimdiffsr_qgis")
        assert Path(sys.modules["slimdiffsr_qgis"].__file__).parent == plugins / "slimdiffsr_qgis"
        assert qgis.utils.startPlugin("slimdiffsr_qgis")
        plugin = qgis.utils.plugins["slimdiffsr_qgis"]
        assert QgsApplication.processingRegistry().algorithmById("slimdiffsr:superresolve") is not None
        assert docks(real_docking) == [plugin.dock]
        icon = sys.modules["slimdiffsr_qgis.icons"].icon_path("slimdiffsr.svg")
        assert Path(icon).parent == plugins / "slimdiffsr_qgis" / "resources" / "icons"
        assert not plugin.action.icon().isNull()
        real_docking.show()
        assert not plugin.dock.setup_box.isHidden(), "a fresh profile has no backend yet: set-up is offered"
        wait_until(lambda: plugin.backend_status is not None, CHECK_BOUND_S, "the backend check")
        assert not plugin.backend_status.ready and not plugin.dock.setup_box.isHidden()
        assert plugin.backend_status.missing == "torch", "QGIS's own Python has GDAL but no PyTorch"
        assert "no PyTorch" in plugin.dock.setup_label.text()
        assert qgis.utils.unloadPlugin("slimdiffsr_qgis")
        assert QgsApplication.processingRegistry().providerById("slimdiffsr") is None
        assert docks(real_docking) == []
    finally:
        for name in [n for n in sys.modules if n == "slimdiffsr_qgis" or n.startswith("slimdiffsr_qgis.")]:
            del sys.modules[name]
        sys.modules.update(checkout_modules)
