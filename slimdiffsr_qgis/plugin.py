"""The plugin object QGIS loads: owns the shared backend client, the Processing provider, the dock and its menu."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any, Optional

from qgis.core import Qgis, QgsApplication, QgsMessageLog
from qgis.PyQt.QtCore import Qt
from qgis.PyQt.QtGui import QIcon
from qgis.PyQt.QtWidgets import QAction

from .backend_setup import SetupError, backend_package, qgis_python, setup_steps, this_python
from .client import BackendClient, BackendError
from .dock import SuperResolveDock
from .icons import icon_path
from .interpreter import (InterpreterNotFound, LaunchSpec, backend_is_set_up, backend_launch,
                          current_platform_is_windows, find_backend_python, first_run_venv, venv_python)
from .provider import SlimDiffSRProvider
from .settings import load_settings, save_settings

PLUGIN_DIR = Path(__file__).resolve().parent
MENU = "&SlimDiffSR"
LOG_TAG = "SlimDiffSR"


def log_line(line: str) -> None:
    """Backend and client messages go to QGIS's log panel (safe from any thread)."""
    QgsMessageLog.logMessage(line, LOG_TAG, Qgis.Info)


def profile_dir() -> Path:
    """The user's QGIS profile folder, where first-run set-up keeps its venv."""
    return Path(QgsApplication.qgisSettingsDirPath())


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

    # ----- the shared backend -----
    def client(self) -> BackendClient:
        """The plugin's backend client, made on first use; the process itself starts on the first request."""
        if self._client is None:
            self._client = BackendClient(self.launch_spec, log=log_line)
        return self._client

    def backend_python(self) -> str:
        """The interpreter the backend starts with now (settings are re-read, so changes apply on restart)."""
        executable, exec_prefix, _version = this_python()
        return find_backend_python(load_settings().backend_python, profile_dir(), PLUGIN_DIR, executable,
                                   exec_prefix, self.windows)

    def launch_spec(self) -> LaunchSpec:
        """How the client starts the backend; a missing interpreter becomes a BackendError to show."""
        try:
            python = self.backend_python()
        except InterpreterNotFound as error:
            raise BackendError("not_found", str(error)) from None
        return backend_launch(python, PLUGIN_DIR, self.windows, os.environ, tempfile.gettempdir())

    # ----- QGIS hooks -----
    def initProcessing(self) -> None:  # noqa: N802 (QGIS hook)
        """Register the Processing provider (also called by qgis_process, without a GUI)."""
        if self.provider is None:
            self.provider = SlimDiffSRProvider(self.client)
            QgsApplication.processingRegistry().addProvider(self.provider)

    def initGui(self) -> None:  # noqa: N802 (QGIS hook)
        """Add the provider, the dock (docked right) and a menu/toolbar action that shows it."""
        self.initProcessing()
        set_up = backend_is_set_up(load_settings().backend_python, profile_dir(), PLUGIN_DIR, self.windows)
        self.dock = SuperResolveDock(self.iface, self.client(), self.open_setup, set_up, self.iface.mainWindow())
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
        """Remove everything initGui added and stop the backend process."""
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
            self._client.stop()
            self._client = None

    # ----- first-run set-up -----
    def open_setup(self) -> None:
        """Show the set-up dialog that makes the backend venv in the profile folder."""
        from .setup_dialog import SetupDialog

        venv = first_run_venv(profile_dir())
        try:
            base = qgis_python(*this_python(), windows=self.windows)
            steps = setup_steps(base, venv, backend_package(PLUGIN_DIR), load_settings().torch_requirement,
                                self.windows)
        except SetupError as error:
            if self.dock is not None:
                self.dock.show_status(f"Cannot set up the backend: {error}", error=True)
            return
        self.setup_dialog = SetupDialog(steps, venv_python(venv, self.windows), str(profile_dir()), self.windows,
                                        self._on_setup_done, self.iface.mainWindow())
        self.setup_dialog.show()

    def _on_setup_done(self, python: str) -> None:
        settings = load_settings()
        settings.backend_python = python
        save_settings(settings)
        self.client().stop()
        if self.dock is not None:
            self.dock.python_widget.setFilePath(python)
            self.dock.setup_box.setVisible(False)
            self.dock.show_status("The backend is set up; press Super-resolve.")
