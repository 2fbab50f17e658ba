"""The dock's background task: runs the shared Job on a QGIS worker thread and reports back in Qt signals.

`run()` executes on a worker thread and touches no QGIS object; `planned` and
`progressed` reach the dock on the main thread, and `finished()` hands the
outcome (or the error) to the dock there.
"""

from __future__ import annotations

import os
from typing import Callable, Optional

from qgis.core import QgsTask
from qgis.PyQt.QtCore import pyqtSignal

from .client import BackendError
from .job import Job, JobOutcome


class SuperResolveTask(QgsTask):
    """One dock job; with plan_only it stops after the estimate (the dock's Estimate button).

    A cancelled job ends as a completed task, not a failed one: the user asked
    for it, and QGIS would otherwise announce "Task failed".
    """

    planned = pyqtSignal(object)
    progressed = pyqtSignal(object, str)

    def __init__(self, job: Job, on_finished: Callable[["SuperResolveTask"], None]) -> None:
        request = job.request
        action = "Estimate" if job.plan_only else "Super-resolve"
        super().__init__(f"{action} {os.path.basename(request.input)} x{request.scale}", QgsTask.CanCancel)
        self.job = job
        self.on_finished = on_finished
        self.outcome: Optional[JobOutcome] = None
        self.error: Optional[BackendError] = None

    def run(self) -> bool:
        try:
            self.outcome = self.job.run(self.isCanceled, self.planned.emit, self._progress)
        except BackendError as error:
            self.error = error
            if error.cancelled:
                self.setDescription(f"{self.description()}: cancelled")
                return True
            return False
        return True

    def finished(self, ok: bool) -> None:
        """Main thread: hand the outcome to the dock, which adds the layer or shows the error."""
        self.on_finished(self)

    def _progress(self, percent: Optional[float], text: str) -> None:
        if percent is not None:
            self.setProgress(percent)
        self.progressed.emit(percent, text)
