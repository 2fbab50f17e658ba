"""Calibration of the error head: does its predicted error match the student's actual error, per sensor and LR kind?

On the manifest's test blocks (validation with `--role validation`, the ones to
choose a recipe on; train with `--role train`, only for a head trained without the
`--sensors` families: their train blocks are as new to it as their validation
blocks, and several times as many), every HR tile is downsampled to LR as benchmarks.quality
does (clean bicubic, and Real-ESRGAN with seed DEGRADATION_SEED + tile index),
super-resolved by the student through the engine's tiled inference, and the head
predicts the median absolute error of each output pixel's channel values (b ln 2
for a head that learnt the Laplace scale b). Per sensor family and LR kind:

- below median: the share of channel values whose actual |error| is below the
  predicted median absolute error (calibrated: 50 %);
- level: the median over channel values of actual |error| / predicted median, the
  factor the prediction is off by (calibrated: 1);
- Spearman 16 px: rank correlation between predicted and actual mean error over
  16x16 blocks, pooled over the family's tiles, and the median (and minimum) of
  the same per tile; beside it the same pooled figure for the hand-made
  predictor |SR - bicubic| (mean over a block of the channel-mean magnitude);
- sparsification: drop the pixels with the largest predicted error first and
  follow the mean actual error of those left (normalised by the mean error); the
  area under that curve for the head, for random order (1 by construction) and for
  the oracle (actual error order); "gap" = (head - oracle) / (random - oracle),
  0 is perfect ranking, 1 no better than random.

The student's outputs are cached under --cache (keyed by its sha256, role and tile).

    .venv/bin/python -m benchmarks.calibration --student resources/weights/slimdiffsr_x4.safetensors \
        --head resources/weights/slimdiffsr_x4.error.safetensors --role test [--sensors neon] [--out F]
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from backend.models import load
from backend.models.error_head import (TRAINED_ON_KEY, ErrorHead, below_median_share, level_factor, load_head,
                                       predict_error)
from backend.models.weights import file_sha256
from training.data.crops import evaluation_tiles, scenes_from_manifest
from training.evaluation.lr import DEGRADATION_SEED, LR_KINDS, make_lr
from training.evaluation.scoring import model_upsampler

BLOCK = 16
SPARSIFICATION_STEPS = 50


def block_means(values: np.ndarray, block: int = BLOCK) -> np.ndarray:
    """Flat means of [H, W] over non-overlapping block x block squares (a partial edge block is dropped)."""
    rows, cols = values.shape[0] // block, values.shape[1] // block
    cropped = values[:rows * block, :cols * block]
    return cropped.reshape(rows, block, cols, block).mean(axis=(1, 3)).ravel()


def spearman(predicted: np.ndarray, actual: np.ndarray) -> float:
    """Spearman rank correlation of two flat arrays (ties share their mean rank); nan when either is constant."""
    if np.ptp(predicted) == 0 or np.ptp(actual) == 0:
        return float("nan")
    return float(np.corrcoef(_ranks(predicted), _ranks(actual))[0, 1])


def _ranks(values: np.ndarray) -> np.ndarray:
    """Ranks 0..n-1 of a flat array, tied values given the mean of their ranks."""
    order = np.argsort(values, kind="stable")
    ranks = np.empty(values.size)
    ranks[order] = np.arange(values.size)
    _, groups, counts = np.unique(values, return_inverse=True, return_counts=True)
    sums = np.bincount(groups, weights=ranks)
    return (sums / counts)[groups]


def sparsification_curve(predicted: np.ndarray, actual: np.ndarray,
                         steps: int = SPARSIFICATION_STEPS) -> np.ndarray:
    """Mean actual error of the pixels left after removing the fraction k/steps (k < steps) with the largest
    predicted error, divided by the mean actual error of all pixels."""
    order = np.argsort(-predicted.ravel(), kind="stable")
    ranked = actual.ravel()[order]
    count = ranked.size
    tail_sums = np.cumsum(ranked[::-1])[::-1]  # tail_sums[i] = sum of ranked[i:]
    kept_from = [int(count * k / steps) for k in range(steps)]
    return np.array([tail_sums[i] / (count - i) for i in kept_from]) / ranked.mean()


def sparsification_areas(predicted: np.ndarray, actual: np.ndarray,
                         steps: int = SPARSIFICATION_STEPS) -> tuple[float, float, float]:
    """(head, random, oracle) areas under the normalised sparsification curve; random order is 1 in expectation."""
    head = float(sparsification_curve(predicted, actual, steps).mean())
    oracle = float(sparsification_curve(actual, actual, steps).mean())
    return head, 1.0, oracle


def sparsification_gap(head: float, random: float, oracle: float) -> float:
    """Where the head's area lies between the oracle (0) and random order (1)."""
    return (head - oracle) / (random - oracle) if random != oracle else float("nan")


@dataclass
class Pooled:
    """Per (LR kind, family): what the table pools over the family's tiles."""

    below: list = field(default_factory=list)
    counts: list = field(default_factory=list)
    medians: list = field(default_factory=list)
    errors: list = field(default_factory=list)
    predicted_blocks: list = field(default_factory=list)
    actual_blocks: list = field(default_factory=list)
    baseline_blocks: list = field(default_factory=list)
    tile_spearman: list = field(default_factory=list)
    predicted_pixels: list = field(default_factory=list)
    actual_pixels: list = field(default_factory=list)


def add_tile(entry: Pooled, predicted_median: np.ndarray, abs_error: np.ndarray, baseline: np.ndarray) -> None:
    """Adds one tile's predicted median absolute error [H, W], actual |error| [C, H, W] and hand-made
    predictor [H, W] to `entry`."""
    pixel_error = abs_error.mean(axis=0)
    entry.below.append(below_median_share(predicted_median, abs_error))
    entry.counts.append(abs_error.size)
    entry.medians.append(predicted_median)
    entry.errors.append(abs_error)
    predicted, actual = block_means(predicted_median), block_means(pixel_error)
    entry.predicted_blocks.append(predicted)
    entry.actual_blocks.append(actual)
    entry.baseline_blocks.append(block_means(baseline))
    entry.tile_spearman.append(spearman(predicted, actual))
    entry.predicted_pixels.append(predicted_median.ravel())
    entry.actual_pixels.append(pixel_error.ravel())


def student_outputs(student_path: Path, manifest: Path, role: str, tile: int, cache: Path,
                    consistency: bool = False) -> list[dict]:
    """Per evaluation tile: sensor, scene, HR and, per LR kind, the LR and the student's SR (cached); with
    `consistency`, the SR back-projected to the LR as the engine's default writes it."""
    suffix = "_consistent" if consistency else ""
    path = cache / f"eval_{file_sha256(str(student_path))[:12]}_{role}_t{tile}{suffix}.pt"
    if path.exists():
        return torch.load(path, weights_only=True)
    student = load(student_path)
    upsample = model_upsampler(student, consistency)
    tiles = []
    for index, item in enumerate(evaluation_tiles(scenes_from_manifest(manifest), role=role, tile=tile)):
        entry = {"sensor": item.sensor, "scene": item.scene, "hr": torch.from_numpy(item.hr)}
        for kind in LR_KINDS:
            lr = make_lr(item.hr, student.scale, kind, DEGRADATION_SEED + index)
            entry[f"lr_{kind}"] = torch.from_numpy(lr)
            entry[f"sr_{kind}"] = torch.from_numpy(np.clip(upsample(lr), 0.0, 1.0))
        tiles.append(entry)
    cache.mkdir(parents=True, exist_ok=True)
    torch.save(tiles, path)
    return tiles


def bicubic_residual(lr01: np.ndarray, sr01: np.ndarray) -> np.ndarray:
    """[H, W] channel-mean |SR - bicubic(LR)|: the hand-made predictor the head is compared with."""
    scale = sr01.shape[-1] // lr01.shape[-1]
    upsampled = F.interpolate(torch.from_numpy(lr01)[None].float(), scale_factor=scale, mode="bicubic",
                              align_corners=False)[0].numpy()
    return np.abs(sr01 - upsampled).mean(axis=0)


def score(tiles: Sequence[dict], head: torch.nn.Module, sensors: Optional[Sequence[str]] = None
          ) -> dict[tuple[str, str], Pooled]:
    """Pooled figures keyed by (LR kind, family) over the tiles of `sensors` (every family when None)."""
    pooled: dict[tuple[str, str], Pooled] = {}
    for item in tiles:
        if sensors and item["sensor"] not in sensors:
            continue
        hr = item["hr"].numpy().astype(np.float32)
        for kind in LR_KINDS:
            lr = item[f"lr_{kind}"].numpy().astype(np.float32)
            sr = item[f"sr_{kind}"].numpy().astype(np.float32)
            entry = pooled.setdefault((kind, item["sensor"]), Pooled())
            predicted_median = predict_error(head, lr, sr)
            add_tile(entry, predicted_median, np.abs(sr - hr), bicubic_residual(lr, sr))
    return pooled


def table_row(kind: str, family: str, entry: Pooled) -> str:
    """One Markdown row of the calibration table."""
    below = float(np.average(entry.below, weights=entry.counts))
    pooled = spearman(np.concatenate(entry.predicted_blocks), np.concatenate(entry.actual_blocks))
    baseline = spearman(np.concatenate(entry.baseline_blocks), np.concatenate(entry.actual_blocks))
    per_tile = np.array(entry.tile_spearman)
    head, random, oracle = sparsification_areas(np.concatenate(entry.predicted_pixels),
                                                np.concatenate(entry.actual_pixels))
    return (f"| {kind} | {family} | {len(entry.below)} | {100 * below:.1f} | {level_factor(entry.medians, entry.errors):.2f} "
            f"| {pooled:.2f} | {np.nanmedian(per_tile):.2f} [{np.nanmin(per_tile):.2f}] | {baseline:.2f} "
            f"| {head:.3f} / {random:.0f} / {oracle:.3f} | {sparsification_gap(head, random, oracle):.2f} |")


def format_table(pooled: dict[tuple[str, str], Pooled], title: str) -> str:
    """The calibration table, rows per LR kind and family."""
    lines = [title, "",
             "| LR | family | tiles | below median (%) | level | Spearman 16 px (pooled) "
             "| Spearman per tile: median [min] | \\|SR - bicubic\\| Spearman | sparsification area: head / random "
             "/ oracle | gap |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for kind in LR_KINDS:
        for family in sorted(f for k, f in pooled if k == kind):
            lines.append(table_row(kind, family, pooled[(kind, family)]))
    return "\n".join(lines) + "\n"


def refuse_seen_train_blocks(head: ErrorHead, sensors: Optional[Sequence[str]]) -> None:
    """SystemExit unless every family to score is one the head never trained on: a head scored on train blocks
    it learnt from would look calibrated and say nothing of new imagery."""
    seen = set(head.meta.get(TRAINED_ON_KEY, "").split(",")) - {""}
    if not sensors or seen & set(sensors) or not seen:
        raise SystemExit(f"--role train scores a head on families it never trained on; give them with --sensors "
                         f"(this head trained on {', '.join(sorted(seen)) or 'unrecorded families'})")


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.calibration", description=__doc__.splitlines()[0])
    parser.add_argument("--student", type=Path, required=True, help="student weights (safetensors)")
    parser.add_argument("--head", type=Path, required=True, help="error head trained for that student")
    parser.add_argument("--role", default="test", choices=("train", "validation", "test"),
                        help="validation blocks to choose a recipe, test blocks only to report; train blocks only "
                             "for a head trained without the --sensors families, which never saw them either")
    parser.add_argument("--sensors", nargs="*", default=None, metavar="FAMILY", help="only these sensor families")
    parser.add_argument("--data", type=Path, default=Path("data/manifest.json"), help="data manifest")
    parser.add_argument("--tile", type=int, default=192, help="HR evaluation tile side")
    parser.add_argument("--cache", type=Path, default=Path("runs/error_head"), help="folder of cached SR outputs")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--consistency", action="store_true",
                        help="score the output back-projected to the LR, as the engine writes it by default")
    parser.add_argument("--out", type=Path, help="also write the table to this file")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    head = load_head(args.head, file_sha256(str(args.student)))
    if args.role == "train":
        refuse_seen_train_blocks(head, args.sensors)
    tiles = student_outputs(args.student, args.data, args.role, args.tile, args.cache, args.consistency)
    pooled = score(tiles, head, args.sensors)
    if not pooled:
        raise SystemExit(f"no {args.role} tile of the sensor families {args.sensors}")
    trained_on = head.meta.get(TRAINED_ON_KEY, "?")
    table = format_table(pooled, f"Error head {args.head.name} (trained on {trained_on}) on the {args.role} blocks, "
                                 f"{args.tile} px tiles{', output back-projected to the LR' if args.consistency else ''}; "
                                 f"predicted median |error| per pixel.")
    table += f"\nCommand: python -m benchmarks.calibration {' '.join(argv if argv is not None else sys.argv[1:])}\n"
    print(table)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
