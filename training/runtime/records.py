"""What a training run leaves for people: a CSV of losses per step and a plain-text run log.

The run log names the data, the backbones found, the fallbacks used and where
the run stopped, so a weights file's provenance can be traced to a readable
account; the CSV is for plotting.
"""

from __future__ import annotations

import csv
import sys
import time
from pathlib import Path


class RunLog:
    """Append-only text log, echoed to stderr; silent on non-main ranks."""

    def __init__(self, path: Path, enabled: bool = True) -> None:
        self.path = path
        self.enabled = enabled
        self.lines: list[str] = []

    def write(self, line: str) -> None:
        self.lines.append(line)
        if not self.enabled:
            return
        stamped = f"{time.strftime('%Y-%m-%d %H:%M:%S')} {line}"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a", encoding="utf-8") as handle:
            handle.write(stamped + "\n")
        print(stamped, file=sys.stderr, flush=True)


class LossTable:
    """CSV rows of step, elapsed minutes and loss terms; continues the same file on resume."""

    def __init__(self, path: Path, enabled: bool = True) -> None:
        self.path = path
        self.enabled = enabled
        self.columns: list[str] | None = None
        if enabled and path.is_file():
            with path.open(newline="", encoding="utf-8") as handle:
                self.columns = next(csv.reader(handle), None)

    def add(self, row: dict[str, float]) -> None:
        if not self.enabled:
            return
        new_file = self.columns is None
        if new_file:
            self.columns = list(row)
        with self.path.open("a", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=self.columns, extrasaction="ignore")
            if new_file:
                writer.writeheader()
            writer.writerow(row)

    def drop_after(self, step: int) -> None:
        """Forget rows logged after `step` (a run that resumes from an earlier checkpoint repeats them)."""
        if not (self.enabled and self.path.is_file()):
            return
        with self.path.open(newline="", encoding="utf-8") as handle:
            rows = list(csv.DictReader(handle))
        kept = [r for r in rows if int(r["step"]) <= step]
        with self.path.open("w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=self.columns or [])
            writer.writeheader()
            writer.writerows(kept)


def read_losses(path: Path) -> list[dict[str, float]]:
    """The rows of a loss table, as numbers."""
    with path.open(newline="", encoding="utf-8") as handle:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(handle)]
