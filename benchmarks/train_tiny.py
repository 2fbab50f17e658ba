"""Time the tiny training chain on this machine: stage 0 -> 1 -> 2 -> evaluate with tiny_cpu.yaml.

Run: .venv/bin/python -m benchmarks.train_tiny [--config training/configs/tiny_cpu.yaml] [--out runs/tiny_cpu]
Runs the same four commands as `make train-tiny`, each in its own process (so
import time counts, as it does for a user), in a fresh output folder, and prints
wall seconds per stage and in all, the share of the student initialised from
the teacher, then the evaluation table. Goal: under 15 minutes on a 2-core CPU.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import time
from pathlib import Path

from backend.models import read_metadata

STAGES = ("stages.uncertainty", "stages.teacher", "stages.student", "evaluation.report")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="training/configs/tiny_cpu.yaml")
    parser.add_argument("--out", default="runs/tiny_cpu_benchmark")
    args = parser.parse_args()
    shutil.rmtree(args.out, ignore_errors=True)
    timings = []
    for stage in STAGES:
        out_flag = "--out-dir" if stage == "evaluation.report" else "--out"
        command = [sys.executable, "-m", f"training.{stage}", "--config", args.config, out_flag, args.out]
        start = time.perf_counter()
        completed = subprocess.run(command, capture_output=True, text=True)
        timings.append((stage, time.perf_counter() - start))
        if completed.returncode != 0:
            print(completed.stderr[-3000:], file=sys.stderr)
            print(f"{stage} failed with exit code {completed.returncode}", file=sys.stderr)
            return 1
    print("| stage | wall seconds |\n|---|---:|")
    for stage, seconds in timings:
        print(f"| {stage} | {seconds:.1f} |")
    print(f"| total | {sum(s for _, s in timings):.1f} |\n")
    meta = read_metadata(Path(args.out) / "student" / "student.safetensors")["meta"]
    print(f"student parameters initialised from the teacher: {float(meta['teacher_init_fraction']):.1%}\n")
    print((Path(args.out) / "evaluation" / "evaluation.md").read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
