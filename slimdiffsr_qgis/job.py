"""One super-resolution job, the same for the dock and Processing: plan, check, run, finish the file, sum up.

Runs on a worker thread and touches no QGIS object: it gets a checked
RunRequest, reports through plain callbacks, and leaves the result file (and the
expected-error layer, when the request asks for one) ready to load, overviews
built. Only what happens to those files afterwards differs: the dock adds them
to the project, Processing returns them.
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
    consistency: str = ""

    def summary(self) -> str:
        """One sentence on the written file (the GPU notice is apart: Processing shows it as a warning)."""
        result = self.result or {}
        error_layer = f", expected error as {result['uncertainty']}" if result.get("uncertainty") else ""
        return (f"{result['width']} x {result['height']} px, {result['bands']} band(s), in {result['seconds']:.1f} s "
                f"on {result['device']}; saved as {result['output']}{error_layer}.")


def describe_consistency(figures: dict[str, str], back_projected: bool) -> str:
    """The measured agreement of an output with its input, from the result's `consistency` items, in one line.

    Shown after every run, with the option on or off, so the user sees how far the
    synthesised detail strays from what the sensor observed.
    """
    how = " (back-projected to the input)" if back_projected else ""
    if "SLIMDIFFSR_CONSISTENCY_MAD_FRACTION" not in figures:
        return f"Consistency{how}: not measured, the centre of the input window has no valid pixel to compare with."
    fraction = 100 * float(figures["SLIMDIFFSR_CONSISTENCY_MAD_FRACTION"])
    shift_x, shift_y = (_two_decimals(float(v)) for v in figures["SLIMDIFFSR_CONSISTENCY_SHIFT"].split(","))
    line = (f"Consistency{how}: output reduced to the input grid differs by {_two_decimals(fraction)} % of the "
            f"input's range, shift x/y {shift_x}/{shift_y} input px")
    if "SLIMDIFFSR_CONSISTENCY_SPECTRAL_ANGLE" in figures:
        line += f", spectral angle {_two_decimals(float(figures['SLIMDIFFSR_CONSISTENCY_SPECTRAL_ANGLE']))} degrees"
    return line + "."


def _two_decimals(value: float) -> str:
    """`value` to two decimals, without the "-0.00" of a tiny negative number."""
    text = f"{value:.2f}"
    return "0.00" if text == "-0.00" else text


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
        if result.get("uncertainty"):
            build_overviews(result["uncertainty"])
        return JobOutcome(plan, result, overviews, cuda_notice(self.client.hello, request.device),
                          describe_consistency(result.get("consistency") or {}, request.consistency))
