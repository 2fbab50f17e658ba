"""Leave one family out: every sensor family scored by weights that never trained on it, against GDAL resampling.

The generalisation protocol (docs/training.md): for each sensor family, a model
trained with that family left out (`data.exclude_sensors`) is scored on the
family's held-out blocks (validation blocks to choose a recipe, test blocks to
report), on clean and Real-ESRGAN-degraded LR made as benchmarks.quality makes
them, beside GDAL cubic and lanczos and, with `--compare` (repeatable), beside
weights that did train on the family: the same recipe on every family says what
leaving the family out costs, the shipped file what the whole recipe adds. The
"overall" rows average the families with equal weight, each scored by its own
left-out model.

A file is refused unless its metadata names the family among those it never
trained on (`excluded_sensors`, written by training.stages.student, which
drops a family the init had seen): a fine-tune of a file that saw the family
is no held-out score.

    .venv/bin/python -m benchmarks.held_out --runs runs/lofo_x4 --role validation [--consistency] \
        [--compare resources/weights/slimdiffsr_x4.safetensors ...] [--card resources/weights/README.md]

`--runs` holds one run per family, `without_<family>/student/student.safetensors`,
as `make lofo-x4` writes them.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch

from backend.models import read_metadata
from benchmarks.quality import (OVERALL, add_block_arguments, add_report_arguments, build_methods,
                                check_card_argument, mean_psnr, publish, rounded_down, sensor_rows, sensors_of,
                                student_label)
from training.evaluation.images import held_out_images
from training.evaluation.lr import DEGRADATION_SEED, LR_KINDS
from training.evaluation.scoring import MetricSet, Scores, ScoreKey, Upsampler, score_images
from training.data.crops import scenes_from_manifest
from training.stages.student import EXCLUDED_SENSORS_KEY, families_never_seen

RUN_PREFIX = "without_"
PRODUCT = Path("student") / "student.safetensors"
LEFT_OUT = "SlimDiffSR trained without the family"
BASELINE = "GDAL lanczos"


def card_markers(scale: int) -> tuple[str, str]:
    """The lines around this benchmark's table in a model card: one pair per scale, so x4 and x8 share a card."""
    return (f"<!-- begin: table written by benchmarks.held_out --card (x{scale}) -->",
            f"<!-- end: table written by benchmarks.held_out --card (x{scale}) -->")


def left_out_scale(runs: dict[str, Path]) -> int:
    """The one scale of the left-out models (a table mixes no scales)."""
    scales = {int(read_metadata(weights)["config"]["scale"]) for weights in runs.values()}
    if len(scales) != 1:
        raise SystemExit(f"the left-out models are of several scales ({sorted(scales)}): give one scale's runs")
    return scales.pop()


def left_out_runs(runs: Path) -> dict[str, Path]:
    """{family: weights trained without it} for every `without_<family>` run under `runs`, checked."""
    found: dict[str, Path] = {}
    for folder in sorted(runs.glob(f"{RUN_PREFIX}*")):
        weights = folder / PRODUCT
        if not folder.is_dir() or not weights.is_file():
            continue
        family = folder.name[len(RUN_PREFIX):]
        if family not in families_never_seen(weights):
            raise SystemExit(f"{weights} does not state that it never trained on {family} (its metadata's "
                             f"{EXCLUDED_SENSORS_KEY}): it cannot score that family as held out")
        found[family] = weights
    if not found:
        raise SystemExit(f"{runs} holds no {RUN_PREFIX}<family>/{PRODUCT}: train them first (make lofo-x4)")
    return found


def family_methods(scale: int, weights: Path, compare: Sequence[Path], consistency: bool) -> dict[str, Upsampler]:
    """GDAL cubic and lanczos, the left-out model and the compared files (each also with the consistency option
    when asked), built as benchmarks.quality builds its methods."""
    methods = build_methods(scale, None, None)
    for path, label in [(weights, LEFT_OUT), *((path, compare_label(path)) for path in compare)]:
        built = student_label(path)
        methods.update({label + name[len(built):]: upsample
                        for name, upsample in build_methods(scale, path, None, consistency).items()
                        if name.startswith(built)})
    return methods


def compare_label(compare: Path) -> str:
    """The rows of weights that did train on the family."""
    return f"SlimDiffSR ({compare.name}), trained on it"


def format_table(scores: dict[ScoreKey, Scores], methods: Sequence[str], scale: int, role: str) -> str:
    """One Markdown table: per LR kind and held-out family (then overall), every method's PSNR-Y, SSIM-Y and
    lead over GDAL lanczos (rounded down, so a printed lead never overstates the true one)."""
    lines = [f"x{scale}, each sensor family scored on its {role} blocks by a model trained without it: PSNR-Y and "
             "SSIM-Y higher is better.", "",
             f"| LR | held-out family | tiles | method | PSNR-Y (dB) | SSIM-Y | lead over {BASELINE} (dB) |",
             "|---|---|---:|---|---:|---:|---:|"]
    for kind in LR_KINDS:
        for family, label in sensor_rows(scores):
            group = sensors_of(scores) if family == OVERALL else [family]
            for method in methods:
                entries = [scores[(kind, method, f)] for f in group]
                tiles = sum(len(entry.psnr) for entry in entries)
                ssim = float(np.mean([np.mean(entry.ssim) for entry in entries]))
                psnr = mean_psnr(scores, kind, method, family)
                lead = rounded_down(psnr - mean_psnr(scores, kind, BASELINE, family))
                lines.append(f"| {kind} | {label} | {tiles} | {method} | {psnr:.2f} | {ssim:.4f} | {lead:+.3f} |")
    return "\n".join(lines) + "\n"


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.held_out", description=__doc__.splitlines()[0])
    add_block_arguments(parser)
    parser.add_argument("--runs", type=Path, required=True,
                        help=f"folder of {RUN_PREFIX}<family> runs, each with {PRODUCT}")
    parser.add_argument("--compare", type=Path, action="append", default=[],
                        help="weights that trained on every family (e.g. the shipped file), scored beside them; "
                             "repeatable")
    parser.add_argument("--consistency", action="store_true",
                        help="also score each model with the consistency option (back-projection to the LR)")
    parser.add_argument("--tile", type=int, default=384, help="HR evaluation tile side")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    add_report_arguments(parser)
    args = parser.parse_args(argv)
    runs = left_out_runs(args.runs)
    scale = left_out_scale(runs)
    check_card_argument(args.card, card_markers(scale))
    if args.threads:
        torch.set_num_threads(args.threads)
    start = time.monotonic()
    scores: dict[ScoreKey, Scores] = {}
    methods: list[str] = []
    for family, weights in runs.items():
        upsamplers = family_methods(scale, weights, args.compare, args.consistency)
        methods = list(upsamplers)
        images = held_out_images(scenes_from_manifest(args.data, [family]), args.role, scale, args.tile)
        scores.update(score_images(images, upsamplers, scale, LR_KINDS, MetricSet()))
        print(f"{family}: scored ({time.monotonic() - start:.0f} s)", file=sys.stderr)
    table = format_table(scores, methods, scale, args.role)
    table += "\nModels: " + "; ".join(f"{family}: {weights}" for family, weights in runs.items()) + "."
    table += (f"\nLR: clean = antialiased bicubic; degraded = Real-ESRGAN second-order degradation, seed "
              f"{DEGRADATION_SEED} + tile index. HR tiles {args.tile} px, normalised per scene (2-98 %).\n"
              f"Command: python -m benchmarks.held_out {' '.join(argv if argv is not None else sys.argv[1:])}\n")
    publish(table, args, start, card_markers(scale))
    return 0


if __name__ == "__main__":
    sys.exit(main())
