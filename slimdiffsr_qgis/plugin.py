"""The plugin object QGIS loads: owns the shared backend client, the Processing provider, the dock and its menu."""

from __future__ import annotations

import os
import platform
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any, Optional

from qgis.core import Qgis, QgsApplication, QgsMessageLog
from qgis.PyQt.QtCore import QObject, Qt, pyqtSignal
from qgis.PyQt.QtGui import QIcon
from qgis.PyQt.QtWidgets import QAction

from .backend_check import BackendStatus, check_backend, check_new_backend
from .backend_setup import SetupError, backend_package
from .client import BackendClient
from .contract import KIND_INTERNAL
from .dock import SuperResolveDock
from .download_plan import nvidia_gpus
from .icons import icon_path
from .interpreter import (LaunchSpec, QgisPython, backend_launch, current_platform_is_windows, find_backend_python,
                          first_run_venv)
from .provider import SlimDiffSRProvider
from .settings import load_proxy, load_settings, save_settings

PLUGIN_DIR = Path(__file__).resolve().parent
MENU = "&SlimDiffSR"
LOG_TAG = "SlimDiffSR"


def log_line(line: str) -> None:
    """Backend and client messages go to QGIS's log panel (safe from any thread)."""
    QgsMessageLog.logMessage(line, LOG_TAG, Qgis.Info)


def profile_dir() -> Path:
    """The user's QGIS profile folder, where first-run set-up keeps its venv."""
    return Path(QgsApplication.qgisSettingsDirPath())


def running_qgis_python(windows: bool) -> QgisPython:
    """The facts about this QGIS's Python that lead to its real interpreter (see `QgisPython`)."""
    try:
        import osgeo

        osgeo_dir = str(Path(osgeo.__file__).parent)
    except ImportError:
        osgeo_dir = ""
    return QgisPython(sys.executable, sys.base_exec_prefix, (sys.version_info.major, sys.version_info.minor),
                      QgsApplication.prefixPath(), windows, osgeo_dir)


class _StatusRelay(QObject):
    """Carries a backend check's result from its worker thread to the main thread."""

    checked = pyqtSignal(object)


class SlimDiffSRPlugin:
    """One per QGIS session; the dock and Processing share its single backend client."""

    def __init__(self, iface: Any) -> None:
        self.iface = iface
        self.windows = current_platform_is_windows()
        self._client: Optional[BackendClient] = None
        self.provider: Optional[SlimDiffSRProvider] = None
        self.dock: Optional[SuperResolveDock] = None
        self.action: Optional[QAction] = None
        self.setup_dialog = None
        self.backend_status: Optional[BackendStatus] = None
        self._checking = False
        self._check_again = False
        self._relay = _StatusRelay()
        self._relay.checked.connect(self._show_backend_status)

    # ----- the shared backend -----
    def client(self) -> BackendClient:
        """The plugin's backend client, made on first use; the process itself starts on the first request."""
        if self._client is None:
            self._client = BackendClient(self.launch_spec, log=log_line)
        return self._client

    def backend_python(self) -> str:
        """The interpreter the backend starts with now (settings are re-read, so changes apply on restart)."""
        return find_backend_python(load_settings().backend_python, profile_dir(), PLUGIN_DIR,
                                   running_qgis_python(self.windows))

    def launch_spec(self) -> LaunchSpec:
        """How the client starts the backend; raises InterpreterNotFound (the client reports it as a missing
        dependency, so the panel offers set-up)."""
        return backend_launch(self.backend_python(), PLUGIN_DIR, self.windows, os.environ, tempfile.gettempdir())

    def check_backend(self, restart: bool = False) -> None:
        """Check in the background whether the backend answers a ping; the panel's Backend box follows the answer.

        Runs when the panel is first shown, after set-up and after the Backend
        Python changes (restart: stop the backend running from the old one first),
        never at QGIS start. The backend that answers stays running: the user
        opened the panel to use it. A check asked for while one is under way runs
        after it, since the answer under way is about the settings before the change.
        """
        if self.dock is None:
            return
        self.dock.show_backend_checking()
        if self._checking:
            self._check_again = True
            return
        self._checking, self._check_again = True, False
        client = self.client()

        def check() -> None:
            try:
                if restart:
                    client.stop()
                status = check_backend(client, self.launch_spec)
            except Exception as error:  # noqa: BLE001 (an answer must come, or no later check would start)
                status = BackendStatus(False, "", KIND_INTERNAL, f"The backend check failed: {error}")
            self._relay.checked.emit(status)

        # Not joined on unload: closing the client cuts a check's backend start short.
        threading.Thread(target=check, name="slimdiffsr-check", daemon=True).start()

    def _show_backend_status(self, status: BackendStatus) -> None:
        self._checking = False
        if self.dock is None:
            return
        if self._check_again:
            self.check_backend(restart=True)
            return
        self.backend_status = status
        self.dock.show_backend_status(status)

    # ----- QGIS hooks -----
    def initProcessing(self) -> None:  # noqa: N802 (QGIS hook)
        """Register the Processing provider (also called by qgis_process, without a GUI)."""
        if self.provider is None:
            self.provider = SlimDiffSRProvider(self.client)
            QgsApplication.processingRegistry().addProvider(self.provider)

    def initGui(self) -> None:  # noqa: N802 (QGIS hook)
        """Add the provider, the dock (docked right) and a menu/toolbar action that shows it."""
        self.initProcessing()
        self.dock = SuperResolveDock(self.iface, self.client(), self.open_setup, self.check_backend,
                                     self.iface.mainWindow())
        self.iface.addDockWidget(Qt.RightDockWidgetArea, self.dock)
        self.action = QAction(QIcon(icon_path("slimdiffsr.svg")), "SlimDiffSR super-resolution",
                              self.iface.mainWindow())
        self.action.setCheckable(True)
        self.action.setChecked(True)
        self.action.toggled.connect(self.dock.setVisible)
        self.dock.visibilityChanged.connect(self.action.setChecked)
        self.iface.addPluginToRasterMenu(MENU, self.action)
        self.iface.addRasterToolBarIcon(self.action)

    def unload(self) -> None:
        """Remove everything initGui added and stop the backend process, without waiting on a backend check."""
        if self.dock is not None:
            self.dock.shutdown()
            self.iface.removeDockWidget(self.dock)
            self.dock.deleteLater()
            self.dock = None
        if self.action is not None:
            self.iface.removePluginRasterMenu(MENU, self.action)
            self.iface.removeRasterToolBarIcon(self.action)
            self.action.deleteLater()
            self.action = None
        if self.provider is not None:
            QgsApplication.processingRegistry().removeProvider(self.provider)
            self.provider = None
        if self._client is not None:
            self._client.close()
            self._client = None

    # ----- first-run set-up -----
    def open_setup(self) -> None:
        """Show the set-up dialog that (re)builds the backend venv in the profile folder."""
        from .setup_dialog import SetupContext, SetupDialog

        try:
            package = backend_package(PLUGIN_DIR)
        except SetupError as error:
            if self.dock is not None:
                self.dock.show_status(f"Cannot set up the backend: {error}", error=True)
            return
        context = SetupContext(
            qgis=running_qgis_python(self.windows), venv_dir=first_run_venv(profile_dir()), package=package,
            system=platform.system(), gpus=nvidia_gpus(), custom_requirement=load_settings().torch_requirement,
            proxy=load_proxy(), environ=dict(os.environ), cwd=str(profile_dir()), verify=self._verify_new_backend)
        self.setup_dialog = SetupDialog(context, self._on_setup_done, self._before_setup, self.iface.mainWindow())
        self.setup_dialog.show()

    def _verify_new_backend(self, python: str) -> BackendStatus:
        return check_new_backend(lambda: backend_launch(python, PLUGIN_DIR, self.windows, os.environ,
                                                        tempfile.gettempdir()))

    def _before_setup(self) -> None:
        # The venv is rebuilt from scratch: a backend running from it must not hold its files.
        self.client().stop()

    def _on_setup_done(self, python: str) -> None:
        settings = load_settings()
        settings.backend_python = python
        save_settings(settings)
        if self.dock is not None:
            # Quietly: the panel would otherwise check once for the new path and once more below.
            self.dock.python_widget.blockSignals(True)
            self.dock.python_widget.setFilePath(python)
            self.dock.python_widget.blockSignals(False)
            self.dock.show_status("The backend is set up; press Super-resolve.")
        self.check_backend(restart=True)
