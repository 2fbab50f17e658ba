"""Mean t* versus a per-pixel t* embedding in the teacher's UNet, measured with the tiny CPU chain.

Run: .venv/bin/python -m benchmarks.spatial_time [--steps 60] [--out runs/spatial_time]
Trains stage 0 once, then stage 1 with `teacher.model.time_embedding` = mean and
= spatial from the same seed and data, and prints per mode the seconds per
step, the mean L1 of the last 10 logged steps and the spread of t* within a
map (what the mean embedding ignores). The tiny backbone is random, so this
measures cost and whether training still converges, not a quality gain.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
from pathlib import Path

from training.stages import teacher as train_teacher
from training.stages import uncertainty as train_uncertainty
from training.runtime.entry import run_stage
from training.runtime.config import load_config
from training.runtime.records import read_losses

CONFIG = Path("training/configs/tiny_cpu.yaml")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--out", default="runs/spatial_time")
    args = parser.parse_args()
    out = Path(args.out)
    shutil.rmtree(out, ignore_errors=True)
    base = load_config(CONFIG, [], str(out / "uncertainty_run"))
    run_stage("uncertainty", train_uncertainty.build_task, base)
    estimator = out / "uncertainty_run" / "uncertainty" / "uncertainty.safetensors"
    print("| UNet time embedding | seconds per step | L1, last 10 steps | t* spread in a map |\n|---|---:|---:|---:|")
    for mode in ("mean", "spatial"):
        config = load_config(CONFIG, [f"teacher.model.time_embedding={mode}", f"teacher.loop.steps={args.steps}",
                                      f"teacher.uncertainty_weights={estimator}"], str(out / mode))
        run_stage("teacher", train_teacher.build_task, config)
        rows = read_losses(out / mode / "teacher" / "losses.csv")
        seconds = rows[-1]["minutes"] * 60 / rows[-1]["step"]
        last = rows[-10:]
        print(f"| {mode} | {seconds:.3f} | {statistics.fmean(r['l1'] for r in last):.4f} | "
              f"{statistics.fmean(r['t_spread'] for r in last):.1f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
