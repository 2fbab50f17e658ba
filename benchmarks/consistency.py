"""How far the student's outputs, reduced to the input grid, differ from their inputs, with and without the
consistency option: the figures every output records, averaged over held-out blocks.

    .venv/bin/python -m benchmarks.consistency --weights resources/weights/slimdiffsr_x4.safetensors \
        [--role test] [--threads 1]

On the manifest's `role` blocks (test by default), each HR tile is downsampled to clean and to
Real-ESRGAN-degraded LR as in benchmarks.quality; the student runs through the engine's tiled inference
with and without back-projection, and `backend.consistency.consistency_figures` scores each output against
its LR: the mean absolute difference as a share of the LR's 2-98 % range (the bar for the option is 0.5 %),
the spectral angle and the phase-correlation shift. One row per LR kind, sensor family and variant.
"""

from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch

from backend.consistency import consistency_figures
from backend.models import load
from training.data.crops import evaluation_tiles, scenes_from_manifest
from training.evaluation.lr import DEGRADATION_SEED, LR_KINDS, make_lr
from training.evaluation.scoring import model_upsampler

VARIANTS = {"plain": False, "back-projected": True}


def evaluate(weights: Path, manifest: Path, role: str, tile: int) -> dict[tuple[str, str, str], list[tuple]]:
    """(MAD fraction, spectral angle, |shift|) of each tile, keyed by (LR kind, family, variant)."""
    model = load(weights)
    upsamplers = {name: model_upsampler(model, consistency) for name, consistency in VARIANTS.items()}
    rows: dict[tuple[str, str, str], list[tuple]] = defaultdict(list)
    for index, item in enumerate(evaluation_tiles(scenes_from_manifest(manifest), role=role, tile=tile)):
        for kind in LR_KINDS:
            lr = make_lr(item.hr, model.scale, kind, DEGRADATION_SEED + index).astype(np.float32)
            for name, upsample in upsamplers.items():
                figures = consistency_figures(lr, np.clip(upsample(lr), 0.0, 1.0), model.scale)
                rows[(kind, item.sensor, name)].append((figures.mean_abs_difference_fraction,
                                                        figures.spectral_angle_degrees,
                                                        float(np.hypot(figures.shift_x, figures.shift_y))))
    return rows


def format_table(rows: dict[tuple[str, str, str], list[tuple]], role: str, weights: Path) -> str:
    lines = [f"Consistency of {weights.name} with its LR on the {role} blocks (mean over tiles):", "",
             "| LR | family | variant | tiles | MAD (% of the 2-98 % range) | spectral angle (°) | shift (LR px) |",
             "|---|---|---|---:|---:|---:|---:|"]
    for kind, family, name in sorted(rows):
        values = np.array(rows[(kind, family, name)], dtype=np.float64)
        mad, angle, shift = values.mean(axis=0)
        lines.append(f"| {kind} | {family} | {name} | {len(values)} | {100 * mad:.3f} | {angle:.3f} | {shift:.3f} |")
    return "\n".join(lines) + "\n"


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.consistency", description=__doc__.splitlines()[0])
    parser.add_argument("--weights", type=Path, required=True)
    parser.add_argument("--data", type=Path, default=Path("data/manifest.json"))
    parser.add_argument("--role", default="test", choices=("validation", "test"))
    parser.add_argument("--tile", type=int, default=384, help="HR evaluation tile side")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    print(format_table(evaluate(args.weights, args.data, args.role, args.tile), args.role, args.weights))
    return 0


if __name__ == "__main__":
    sys.exit(main())
