"""The first-run set-up dialog: says which Python it builds on and what it downloads, then runs the steps with a log.

Before anything is created the dialog shows the interpreter it found (or every
candidate it tried and why each was refused, with a file chooser to pick
another) and the download plan with its size; the CUDA build is a check box
only where an NVIDIA GPU was found. Set-up succeeds only when the new backend
answers a ping; after a failure the same button runs it again from scratch.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping, Optional

from qgis.core import QgsApplication, QgsTask
from qgis.gui import QgsFileWidget
from qgis.PyQt.QtCore import pyqtSignal
from qgis.PyQt.QtGui import QFontDatabase, QGuiApplication
from qgis.PyQt.QtWidgets import (QCheckBox, QDialog, QHBoxLayout, QLabel, QPlainTextEdit, QProgressBar, QPushButton,
                                 QVBoxLayout, QWidget)

from .backend_check import BackendStatus
from .backend_setup import SetupError, Step, run_steps, setup_steps
from .download_plan import DownloadPlan, Proxy, cuda_choice_label, download_plan
from .interpreter import QgisPython, qgis_interpreter_candidates, venv_python
from .python_probe import BaseChoice, choose_base_python

ERROR_STYLE = "color: #b00020;"


@dataclass(frozen=True)
class SetupContext:
    """Everything the dialog needs, gathered by the plugin as plain data (tests build it directly).

    system: `platform.system()`; gpus: from `nvidia_gpus()`; custom_requirement:
    the settings' PyTorch override ("" lets set-up choose); cwd: a folder with no
    `backend` package in it (the profile folder); verify(python) starts the new
    backend and pings it (called on the worker thread).
    """

    qgis: QgisPython
    venv_dir: Path
    package: str
    system: str
    gpus: list[str]
    custom_requirement: str
    proxy: Optional[Proxy]
    environ: Mapping[str, str]
    cwd: str
    verify: Callable[[str], BackendStatus]


class SetupTask(QgsTask):
    """Runs the set-up steps, then the ping, on a worker thread; reports through signals only."""

    line = pyqtSignal(str)
    step = pyqtSignal(int, int, str)

    def __init__(self, steps: list[Step], context: SetupContext, python: str,
                 on_finished: Callable[["SetupTask", bool], None]) -> None:
        super().__init__("Set up the SlimDiffSR backend", QgsTask.CanCancel)
        self.steps = steps
        self.context = context
        self.python = python
        self.on_finished = on_finished
        self.error: Optional[str] = None

    def run(self) -> bool:
        try:
            run_steps(self.steps, self.line.emit, self.context.environ, self.context.cwd, on_step=self._on_step,
                      is_cancelled=self.isCanceled, windows=self.context.qgis.windows)
        except (SetupError, OSError) as error:
            self.error = str(error)
            return False
        self._report(len(self.steps), "Start the backend and ping it")
        status = self.context.verify(self.python)
        self.line.emit(status.message)
        if not status.ready:
            self.error = status.message
            return False
        return True

    def _on_step(self, index: int, _count: int, title: str) -> None:
        if index < len(self.steps):
            self._report(index, title)

    def _report(self, index: int, title: str) -> None:
        count = len(self.steps) + 1
        self.step.emit(index, count, title)
        self.setProgress(100.0 * index / count)

    def finished(self, ok: bool) -> None:
        self.on_finished(self, ok)


class SetupDialog(QDialog):
    """Shows what set-up will do, runs it, and keeps the log copyable; `on_success` gets the new interpreter."""

    def __init__(self, context: SetupContext, on_success: Callable[[str], None],
                 on_start: Callable[[], None] = lambda: None, parent: Optional[QWidget] = None) -> None:
        super().__init__(parent)
        self.setWindowTitle("Set up the SlimDiffSR backend")
        self.resize(680, 520)
        self.context = context
        self.python = str(venv_python(context.venv_dir, context.qgis.windows))
        self.on_success = on_success
        self.on_start = on_start
        self.task: Optional[SetupTask] = None
        self.choice = choose_base_python(qgis_interpreter_candidates(context.qgis), context.qgis, context.environ,
                                         context.cwd)
        column = QVBoxLayout(self)
        intro = QLabel(f"Set-up makes a Python environment at {context.venv_dir} from QGIS's own Python, so the "
                       "backend uses QGIS's GDAL, and installs PyTorch and the SlimDiffSR backend into it. Nothing is "
                       "installed into QGIS itself. Running set-up again rebuilds that environment from scratch.", self)
        intro.setWordWrap(True)
        column.addWidget(intro)
        self.interpreter_label = QLabel(self)
        self.interpreter_label.setWordWrap(True)
        column.addWidget(self.interpreter_label)
        chooser_row = QHBoxLayout()
        chooser_row.addWidget(QLabel("Another Python:", self))
        self.interpreter_widget = QgsFileWidget(self)
        self.interpreter_widget.fileChanged.connect(self.choose_interpreter)
        chooser_row.addWidget(self.interpreter_widget, 1)
        column.addLayout(chooser_row)
        self.plan_label = QLabel(self)
        self.plan_label.setWordWrap(True)
        column.addWidget(self.plan_label)
        self.cuda_box = QCheckBox(self)
        self.cuda_box.toggled.connect(lambda _checked: self._show_choice())
        column.addWidget(self.cuda_box)
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
        self._show_choice()

    def plan(self) -> DownloadPlan:
        """The download plan for the interpreter and CUDA choice shown now."""
        return download_plan(self.context.gpus, self.cuda_box.isChecked(), self.context.system, self.choice.torch,
                             self.context.custom_requirement, self.context.proxy)

    def choose_interpreter(self, path: str) -> None:
        """Check an interpreter the user picked (it needs GDAL's bindings and numpy) and use it if it passes."""
        if not path.strip():
            return
        picked = choose_base_python([Path(path.strip())], None, self.context.environ, self.context.cwd)
        self.choice = picked if picked.python else BaseChoice("", refused=self.choice.refused + picked.refused)
        self._show_choice()

    def _show_choice(self) -> None:
        self.interpreter_label.setText(self.choice.explanation())
        self.interpreter_label.setStyleSheet("" if self.choice.python else ERROR_STYLE)
        plan = self.plan()
        self.plan_label.setText(plan.summary())
        self.cuda_box.setText(cuda_choice_label(plan) if plan.cuda_offered else "")
        self.cuda_box.setVisible(plan.cuda_offered and plan.build in ("cpu", "cuda"))
        self.start_button.setEnabled(self.task is None and bool(self.choice.python))

    def start(self) -> None:
        """Rebuild the environment and install into it, in the background."""
        if self.task is not None or not self.choice.python:
            return
        plan = self.plan()
        steps = setup_steps(self.choice.python, self.context.venv_dir, self.context.package, plan.torch_args,
                            self.context.qgis.windows, plan.pip_environment())
        self.on_start()
        self.start_button.setEnabled(False)
        self.interpreter_widget.setEnabled(False)
        self.cuda_box.setEnabled(False)
        self.status_label.setStyleSheet("")
        self.log_view.appendPlainText(plan.summary())
        self.task = SetupTask(steps, self.context, self.python, self._on_finished)
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
        self.interpreter_widget.setEnabled(True)
        self.cuda_box.setEnabled(True)
        if ok:
            self.progress_bar.setValue(100)
            self.status_label.setText(f"Done: the backend answers. It runs with {self.python}.")
            self.start_button.setEnabled(False)
            self.on_success(self.python)
            return
        self.status_label.setStyleSheet(ERROR_STYLE)
        self.status_label.setText(f"Set-up failed: {task.error or 'cancelled'} Copy the log for details.")
        self.start_button.setText("Run set-up again")
        self.start_button.setEnabled(True)

    def closeEvent(self, event) -> None:  # noqa: N802 (Qt override)
        if self.task is not None:
            self.task.cancel()
        super().closeEvent(event)
