"""One super-resolution job, the same for the dock and Processing: plan, check, run, finish the file, sum up.

Runs on a worker thread and touches no QGIS object: it gets a checked
RunRequest, reports through plain callbacks, and leaves the result file ready
to load (overviews built). Only what happens to that file
afterwards differs: the dock adds it to the project, Processing returns it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Callable, Optional

from .client import BackendClient, BackendError, cuda_notice
from .contract import KIND_BAD_INPUT, KIND_CANCELLED, KIND_INTERNAL, BadInput, RunRequest
from .plan_check import NotEnoughDisk, check_disk, describe_progress
from .result_layer import build_overviews
from .shipped_weights import check_weights, shipped_scales

# progress(percent, text): percent None means "busy, no fraction known yet".
Progress = Callable[[Optional[float], str], None]


@dataclass
class JobOutcome:
    """What a finished job produced; `result` is None after an estimate only."""

    plan: dict[str, Any]
    result: Optional[dict[str, Any]] = None
    overviews: int = 0
    notice: str = ""

    def summary(self) -> str:
        """One sentence on the written file (the GPU notice is apart: Processing shows it as a warning)."""
        result = self.result or {}
        return (f"{result['width']} x {result['height']} px, {result['bands']} band(s), in {result['seconds']:.1f} s "
                f"on {result['device']}; saved as {result['output']}.")


class Job:
    """One request through the shared backend client.

    weights_control names where the user picks a weights file ("the Weights box",
    "WEIGHTS"), so a scale without shipped weights gets a message about a control
    the user has.
    """

    def __init__(self, client: BackendClient, request: RunRequest, weights_control: str,
                 plan_only: bool = False) -> None:
        self.client = client
        self.request = request
        self.weights_control = weights_control
        self.plan_only = plan_only

    def run(self, is_cancelled: Callable[[], bool], on_plan: Callable[[dict[str, Any]], None],
            on_progress: Progress) -> JobOutcome:
        """Do the job; raises BackendError (kind from the contract's ERROR_KINDS), kind "cancelled" on cancel."""
        try:
            return self._run(is_cancelled, on_plan, on_progress)
        except (BadInput, NotEnoughDisk) as error:
            raise BackendError(KIND_BAD_INPUT, str(error)) from None
        except OSError as error:
            raise BackendError(KIND_INTERNAL, str(error)) from None

    def _run(self, is_cancelled: Callable[[], bool], on_plan: Callable[[dict[str, Any]], None],
             on_progress: Progress) -> JobOutcome:
        request = self.request
        check_weights(request, shipped_scales(), self.weights_control)
        on_progress(None, "Starting the backend and checking the request...")
        plan = self.client.plan(request)
        check_disk(plan, os.path.dirname(os.path.abspath(request.output)))
        on_plan(plan)
        if self.plan_only:
            return JobOutcome(plan)
        if is_cancelled():
            raise BackendError(KIND_CANCELLED, "cancelled before the run started")
        on_progress(None, "Loading the model and reading the input...")

        def progress(done: int, total: int) -> None:
            on_progress(100.0 * done / max(total, 1), describe_progress(done, total))

        result = self.client.run(request, progress=progress, is_cancelled=is_cancelled)
        on_progress(100.0, "Building overviews...")
        overviews = build_overviews(result["output"])
        return JobOutcome(plan, result, overviews, cuda_notice(self.client.hello, request.device))
