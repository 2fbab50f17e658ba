"""The dock's background job: plan, check the disk, run on the backend, build overviews.

`run()` executes on a worker thread and touches no QGIS object: it receives a
plain request dict and reports through Qt signals (delivered to the dock on the
main thread) and through `result` / `error`, which `finished()` hands to the dock
on the main thread.
"""

from __future__ import annotations

import os
from typing import Any, Callable, Optional

from qgis.core import QgsTask
from qgis.PyQt.QtCore import pyqtSignal

from .client import BackendClient, BackendError
from .plan_check import NotEnoughDisk, check_disk
from .result_layer import build_overviews


class SuperResolveTask(QgsTask):
    """One dock job; with plan_only it stops after the estimate (the dock's Estimate button)."""

    planned = pyqtSignal(object)
    tiles_done = pyqtSignal(int, int)

    def __init__(self, client: BackendClient, request: dict[str, Any],
                 on_finished: Callable[["SuperResolveTask", bool], None], plan_only: bool = False) -> None:
        super().__init__(f"Super-resolve {os.path.basename(request['input'])} x{request['scale']}",
                         QgsTask.CanCancel)
        self.client = client
        self.request = request
        self.plan_only = plan_only
        self.on_finished = on_finished
        self.result: Optional[dict[str, Any]] = None
        self.error: Optional[BackendError] = None

    def run(self) -> bool:
        try:
            plan = self.client.plan(self.request)
            self.planned.emit(plan)
            check_disk(plan, os.path.dirname(os.path.abspath(self.request["output"])))
            if self.plan_only or self.isCanceled():
                return not self.isCanceled()
            self.result = self.client.run(self.request, progress=self._progress, is_cancelled=self.isCanceled)
            self.result["overviews"] = build_overviews(self.result["output"])
            return True
        except NotEnoughDisk as error:
            self.error = BackendError("no_space", str(error))
        except BackendError as error:
            self.error = error
        except OSError as error:
            self.error = BackendError("internal", str(error))
        return False

    def finished(self, ok: bool) -> None:
        """Main thread: hand the outcome to the dock, which adds the layer or shows the error."""
        self.on_finished(self, ok)

    def _progress(self, done: int, total: int) -> None:
        self.setProgress(100.0 * done / max(total, 1))
        self.tiles_done.emit(done, total)
