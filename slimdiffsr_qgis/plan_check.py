"""Judge a run's plan before running it: describe size, passes, time and disk, and refuse when the disk is too small.

Also words the run's progress in the plan's own unit, so the estimate and the
progress line count the same tile passes.
"""

from __future__ import annotations

from typing import Any

from .contract import human_size

# Room left beside the result: the GeoTIFF is written under a temporary name and
# overviews are added afterwards (about a third of the image at factor-2 levels).
DISK_MARGIN = 1.4


class NotEnoughDisk(Exception):
    """The output folder cannot hold the result."""


def human_seconds(seconds: float) -> str:
    """75 -> '1 min 15 s'."""
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds} s"
    minutes, rest = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {rest} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min"


def describe_plan(plan: dict[str, Any]) -> str:
    """One line for the dock and the Processing log: output size, tile passes, time estimate and free disk.

    `steps` is the backend's progress total (every tile once per model pass, plus the
    samples that measure the window's statistics), so the progress line counts to it.
    """
    size = (f"output {plan['width']} x {plan['height']} px, {plan['bands']} band(s) {plan['dtype']}, "
            f"about {human_size(plan['output_bytes'])}")
    work = (f"{plan['tiles']} tile(s) x {plan['passes']} model pass(es): {plan['steps']} tile passes "
            "with the statistics samples")
    estimate = plan.get("seconds_estimate")
    timing = (f"about {human_seconds(estimate)} (from the last run)" if estimate is not None
              else "time is measured on the first run")
    return f"{size}; {work}; {timing}; {human_size(plan['free_bytes'])} free on disk"


def describe_progress(done: int, total: int) -> str:
    """The progress line, in the unit the estimate announced (its `steps` tile passes)."""
    return f"tile pass {done} of {total}"


def check_disk(plan: dict[str, Any], output_folder: str) -> None:
    """Raise NotEnoughDisk when the folder's free space cannot hold the output and its overviews."""
    needed = plan["output_bytes"] * DISK_MARGIN
    if needed > plan["free_bytes"]:
        raise NotEnoughDisk(
            f"the result needs about {human_size(needed)} but {output_folder} has only "
            f"{human_size(plan['free_bytes'])} free. Choose another output folder or a smaller extent.")
