"""Judge a run's plan before running it: describe size, time and disk, and refuse when the disk is too small."""

from __future__ import annotations

from typing import Any

# Room left beside the result: the GeoTIFF is written under a temporary name and
# overviews are added afterwards (about a third of the image at factor-2 levels).
DISK_MARGIN = 1.4


class NotEnoughDisk(Exception):
    """The output folder cannot hold the result."""


def human_bytes(count: float) -> str:
    """1536 -> '1.5 KB'."""
    value = float(count)
    for unit in ("B", "KB", "MB", "GB"):
        if abs(value) < 1024:
            return f"{value:.0f} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TB"


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
    """One line for the dock: output size, tiles, time estimate and free disk."""
    size = (f"output {plan['width']} x {plan['height']} px, {plan['bands']} band(s) {plan['dtype']}, "
            f"about {human_bytes(plan['output_bytes'])}")
    estimate = plan.get("seconds_estimate")
    timing = (f"about {human_seconds(estimate)} (from the last run)" if estimate is not None
              else "time is measured on the first run")
    return f"{size}; {plan['tiles']} tile(s); {timing}; {human_bytes(plan['free_bytes'])} free on disk"


def check_disk(plan: dict[str, Any], output_folder: str) -> None:
    """Raise NotEnoughDisk when the folder's free space cannot hold the output and its overviews."""
    needed = plan["output_bytes"] * DISK_MARGIN
    if needed > plan["free_bytes"]:
        raise NotEnoughDisk(
            f"the result needs about {human_bytes(needed)} but {output_folder} has only "
            f"{human_bytes(plan['free_bytes'])} free. Choose another output folder or a smaller extent.")
