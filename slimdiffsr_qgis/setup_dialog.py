"""The first-run set-up dialog: runs the set-up steps in the background with progress and a copyable log."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Optional

from qgis.core import QgsApplication, QgsTask
from qgis.PyQt.QtCore import pyqtSignal
from qgis.PyQt.QtGui import QFontDatabase, QGuiApplication
from qgis.PyQt.QtWidgets import (QDialog, QHBoxLayout, QLabel, QPlainTextEdit, QProgressBar, QPushButton,
                                 QVBoxLayout, QWidget)

from .backend_setup import SetupError, Step, run_steps


class SetupTask(QgsTask):
    """Runs the set-up steps on a worker thread; reports through signals only."""

    line = pyqtSignal(str)
    step = pyqtSignal(int, int, str)

    def __init__(self, steps: list[Step], cwd: str, windows: bool,
                 on_finished: Callable[["SetupTask", bool], None]) -> None:
        super().__init__("Set up the SlimDiffSR backend", QgsTask.CanCancel)
        self.steps = steps
        self.cwd = cwd
        self.windows = windows
        self.on_finished = on_finished
        self.error: Optional[str] = None

    def run(self) -> bool:
        try:
            run_steps(self.steps, self.line.emit, os.environ, self.cwd, on_step=self._on_step,
                      is_cancelled=self.isCanceled, windows=self.windows)
        except (SetupError, OSError) as error:
            self.error = str(error)
            return False
        return True

    def _on_step(self, index: int, count: int, title: str) -> None:
        self.step.emit(index, count, title)
        self.setProgress(100.0 * index / max(count, 1))

    def finished(self, ok: bool) -> None:
        self.on_finished(self, ok)


class SetupDialog(QDialog):
    """Shows what set-up will do, runs it, and keeps the log copyable; `on_success` gets the new interpreter."""

    def __init__(self, steps: list[Step], python: Path, cwd: str, windows: bool,
                 on_success: Callable[[str], None], parent: Optional[QWidget] = None) -> None:
        super().__init__(parent)
        self.setWindowTitle("Set up the SlimDiffSR backend")
        self.resize(640, 420)
        self.steps = steps
        self.python = python
        self.cwd = cwd
        self.windows = windows
        self.on_success = on_success
        self.task: Optional[SetupTask] = None
        column = QVBoxLayout(self)
        intro = QLabel(f"This creates a Python environment at {python.parent.parent} from QGIS's own Python "
                       "(it keeps using QGIS's GDAL) and installs PyTorch and the SlimDiffSR backend into it. "
                       "Nothing is installed into QGIS itself; no model is downloaded.", self)
        intro.setWordWrap(True)
        column.addWidget(intro)
        self.progress_bar = QProgressBar(self)
        self.progress_bar.setRange(0, 100)
        column.addWidget(self.progress_bar)
        self.status_label = QLabel("Ready.", self)
        self.status_label.setWordWrap(True)
        column.addWidget(self.status_label)
        self.log_view = QPlainTextEdit(self)
        self.log_view.setReadOnly(True)
        self.log_view.setFont(QFontDatabase.systemFont(QFontDatabase.FixedFont))
        column.addWidget(self.log_view, 1)
        buttons = QHBoxLayout()
        self.start_button = QPushButton("Start set-up", self)
        self.copy_button = QPushButton("Copy log", self)
        self.close_button = QPushButton("Close", self)
        self.start_button.clicked.connect(self.start)
        self.copy_button.clicked.connect(self.copy_log)
        self.close_button.clicked.connect(self.close)
        for button in (self.start_button, self.copy_button, self.close_button):
            buttons.addWidget(button)
        column.addLayout(buttons)

    def start(self) -> None:
        """Run the steps in the background."""
        if self.task is not None:
            return
        self.start_button.setEnabled(False)
        self.task = SetupTask(self.steps, self.cwd, self.windows, self._on_finished)
        self.task.line.connect(self.log_view.appendPlainText)
        self.task.step.connect(self._on_step)
        QgsApplication.taskManager().addTask(self.task)

    def copy_log(self) -> None:
        """Put the whole log on the clipboard, for a bug report."""
        QGuiApplication.clipboard().setText(self.log_view.toPlainText())

    def _on_step(self, index: int, count: int, title: str) -> None:
        self.progress_bar.setValue(int(100 * index / max(count, 1)))
        self.status_label.setText(f"Step {min(index + 1, count)} of {count}: {title}")

    def _on_finished(self, task: SetupTask, ok: bool) -> None:
        self.task = None
        if ok:
            self.progress_bar.setValue(100)
            self.status_label.setText(f"Done. The backend uses {self.python}.")
            self.on_success(str(self.python))
        else:
            self.status_label.setText(f"Set-up failed: {task.error or 'cancelled'}. Copy the log for details.")
            self.start_button.setEnabled(True)

    def closeEvent(self, event) -> None:
        if self.task is not None:
            self.task.cancel()
        super().closeEvent(event)
