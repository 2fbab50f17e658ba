"""The prepared GPU check runs to the end on a CPU at tiny sizes, so it still works when a GPU session runs it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_the_gpu_check_runs_every_row_on_a_cpu_and_writes_the_table_it_prints(tmp_path):
    out = tmp_path / "gpu_check.md"
    run = subprocess.run([sys.executable, "-m", "benchmarks.gpu_check", "--device", "cpu", "--size", "64",
                          "--out", str(out)], cwd=REPO, capture_output=True, text=True, timeout=300,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert run.returncode == 0, run.stderr[-3000:]
    table = out.read_text()
    assert run.stdout == table
    rows = [line.split("|")[1:-1] for line in table.splitlines()[2:]]
    cells = {(part.strip(), case.strip()): (result.strip(), note.strip()) for part, case, result, _, note in rows}
    assert [cells["CUDA vs CPU", dtype][0] for dtype in ("fp32", "fp16", "bf16")] == ["no CUDA device"] * 3
    for part in ("speed", "speed, torch.compile"):
        assert cells[part, "compact (shipped)"][0].endswith("s per 128²")
        result, note = cells[part, "paper"]
        assert result.endswith("s per 128²") and "0.037 s per 512² on an RTX 3090" in note
    result, note = cells["whole raster", "64² -> 256²"]
    assert "output MP/s" in result and "% of model-only" in note
    assert cells["environment", "cpu"][0].startswith("CPU; torch ")
    assert len(rows) == 9 and not any("failed" in result or "skipped" in result for result, _ in cells.values())
