"""Held-out quality of SR models vs GDAL resampling: PSNR-Y, SSIM-Y and NIQE per sensor, as one Markdown table.

On the manifest's test blocks (validation blocks with `--role validation`, the
ones to choose a recipe on; one sensor family's only with `--sensors`, which
scores a model trained with `data.exclude_sensors` on the family it never
saw), every HR tile (every block whole with `--whole`, the paper's protocol)
is downsampled to LR in two ways: clean antialiased bicubic, and the
Real-ESRGAN degradation with a fixed seed per tile (and a third with
`--sensor-lr`: the sensor chain of `training.data.sensor_degradation`), by
`training.evaluation.lr`, and scored by `training.evaluation.scoring`, as
training's own report is. Each LR is brought back to HR size by GDAL cubic
and lanczos resampling (gdal.Translate on an in-memory dataset: what a QGIS
user would do otherwise), by the student weights (`--weights`, run through
the engine's tiled inference) and by the reference CNN (`--reference`). PSNR-Y and SSIM-Y
(border = scale) are averaged per sensor over its tiles; NIQE is scored once
per sensor on the pooled 96 px patches of its tiles. "overall" averages the
sensors with equal weight (NIQE pooled over all tiles). With `--weights`, a
second table gives the student's PSNR-Y lead over every other method to 3
decimals, rounded down: the differences the acceptance is stated in.

    .venv/bin/python -m benchmarks.quality --weights resources/weights/slimdiffsr_x4.safetensors \
        --reference runs/reference_cnn_x4.safetensors [--out docs/quality_x4.md] [--card resources/weights/README.md]
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
from osgeo import gdal

from slimdiffsr_qgis.contract import SUPPORTED_SCALES
from training.data.crops import DEFAULT_SPEC, scenes_from_manifest
from training.evaluation.images import held_out_images
from training.evaluation.lr import DEGRADATION_SEED, EVALUATION_LR_KINDS, LR_KINDS
from training.evaluation.metrics import NiqeModel, niqe_score
from training.evaluation.scoring import MetricSet, Scores, ScoreKey, Upsampler, model_upsampler, score_images

gdal.UseExceptions()

OVERALL = "overall"
CONSISTENCY_SUFFIX = " + consistency"
CARD_BEGIN = "<!-- begin: table written by benchmarks.quality --card -->"
CARD_END = "<!-- end: table written by benchmarks.quality --card -->"


def gdal_upsample(lr01: np.ndarray, scale: int, algorithm: str) -> np.ndarray:
    """[C, h, w] float -> [C, h*scale, w*scale] by gdal.Translate with `algorithm` ("cubic", "lanczos", ...)."""
    channels, height, width = lr01.shape
    source = gdal.GetDriverByName("MEM").Create("", width, height, channels, gdal.GDT_Float32)
    source.SetGeoTransform((0.0, float(scale), 0.0, 0.0, 0.0, -float(scale)))
    for index in range(channels):
        source.GetRasterBand(index + 1).WriteArray(lr01[index])
    result = gdal.Translate("", source, format="MEM", width=width * scale, height=height * scale,
                            resampleAlg=algorithm)
    values = result.ReadAsArray().astype(np.float32).reshape(channels, height * scale, width * scale)
    result = source = None
    return values


def evaluate(manifest: Path, methods: dict[str, Upsampler], scale: int, niqe_model: NiqeModel,
             role: str = "test", tile: int = 384, sensors: Optional[Sequence[str]] = None,
             kinds: Sequence[str] = LR_KINDS, whole: bool = False) -> dict[ScoreKey, Scores]:
    """Scores keyed by (LR kind, method, sensor) over the `role` tiles of the manifest's scenes (of `sensors`
    only, when given: the held-out family of the leave-one-family-out protocol); over each block whole
    with `whole`, the paper's protocol."""
    images = held_out_images(scenes_from_manifest(manifest, sensors), role, scale, tile, whole)
    return score_images(images, methods, scale, kinds, MetricSet(niqe=niqe_model))


def kinds_of(scores: dict[ScoreKey, Scores]) -> list[str]:
    """The LR kinds scored, in table order."""
    found = {kind for kind, _, _ in scores}
    return [kind for kind in EVALUATION_LR_KINDS if kind in found]


def sensors_of(scores: dict[ScoreKey, Scores]) -> list[str]:
    """The sensors scored, in table order."""
    return sorted({sensor for _, _, sensor in scores})


def sensor_rows(scores: dict[ScoreKey, Scores]) -> list[tuple[str, str]]:
    """(sensor, row label) for each sensor and then the bold "overall" row, shared by both tables."""
    return [(sensor, sensor) for sensor in sensors_of(scores)] + [(OVERALL, f"**{OVERALL}**")]


def mean_psnr(scores: dict[ScoreKey, Scores], kind: str, method: str, sensor: str) -> float:
    """PSNR-Y of `method` over `sensor`'s tiles; for "overall", the equal-weight mean of the sensors."""
    if sensor == OVERALL:
        return float(np.mean([mean_psnr(scores, kind, method, s) for s in sensors_of(scores)]))
    return float(np.mean(scores[(kind, method, sensor)].psnr))


def format_table(scores: dict[ScoreKey, Scores], niqe_model: NiqeModel, methods: Sequence[str],
                 scale: int, role: str) -> str:
    """One Markdown table: rows per LR kind, sensor (and overall), method."""
    sensors = sensors_of(scores)
    lines = [f"x{scale} on the {role} blocks: PSNR-Y / SSIM-Y higher is better, NIQE lower is better.", "",
             "| LR | sensor | tiles | method | PSNR-Y (dB) | SSIM-Y | NIQE |",
             "|---|---|---:|---|---:|---:|---:|"]
    for kind in kinds_of(scores):
        for sensor, label in sensor_rows(scores):
            for method in methods:
                entries = [scores[(kind, method, s)] for s in (sensors if sensor == OVERALL else [sensor])]
                ssim = float(np.mean([np.mean(e.ssim) for e in entries]))
                count = sum(len(e.psnr) for e in entries)
                niqe = niqe_score(torch.cat([f for e in entries for f in e.features]), niqe_model)
                lines.append(f"| {kind} | {label} | {count} | {method} | {mean_psnr(scores, kind, method, sensor):.2f}"
                             f" | {ssim:.4f} | {niqe:.2f} |")
    return "\n".join(lines) + "\n"


def format_margins(scores: dict[ScoreKey, Scores], student: str, baselines: Sequence[str]) -> str:
    """The student's PSNR-Y lead over each baseline, per LR kind and sensor, to 3 decimals.

    Acceptance bars are stated as these differences; at the main table's
    2 decimals a 0.003 dB deficit reads as a tie, so they are printed here, by
    the script, rather than worked out by hand from rounded figures. They are
    rounded down, never to nearest: a lead of +0.4995 against a bar of +0.5
    must not print as +0.500.
    """
    lines = [f"PSNR-Y lead of {student} (dB, positive = ahead):", "",
             "| LR | sensor | " + " | ".join(f"over {b}" for b in baselines) + " |",
             "|---|---|" + "---:|" * len(baselines)]
    for kind in kinds_of(scores):
        for sensor, label in sensor_rows(scores):
            leads = [mean_psnr(scores, kind, student, sensor) - mean_psnr(scores, kind, b, sensor) for b in baselines]
            lines.append(f"| {kind} | {label} | " + " | ".join(f"{rounded_down(lead):+.3f}" for lead in leads) + " |")
    return "\n".join(lines) + "\n"


def rounded_down(lead: float, decimals: int = 3) -> float:
    """`lead` rounded toward minus infinity, so that a printed lead never overstates the true one.

    The 1e-9 absorbs the float error of a difference such as 21 - 21.003, which
    would otherwise floor one unit too low.
    """
    unit = 10 ** decimals
    return math.floor(lead * unit + 1e-9) / unit


def student_label(weights: Path) -> str:
    """The method name the student's rows carry."""
    return f"SlimDiffSR ({weights.name})"


def build_methods(scale: int, weights: Optional[Path], reference: Optional[Path],
                  consistency: bool = False) -> dict[str, Upsampler]:
    """GDAL cubic and lanczos, plus the student and the reference CNN when their files are given, and the
    student with the consistency option when asked."""
    methods: dict[str, Upsampler] = {
        "GDAL cubic": lambda lr: gdal_upsample(lr, scale, "cubic"),
        "GDAL lanczos": lambda lr: gdal_upsample(lr, scale, "lanczos"),
    }
    if reference is not None:
        from benchmarks.reference_cnn import load_reference

        model = load_reference(reference)
        _check_scale(model.scale, scale, reference)
        methods[f"reference CNN ({reference.name})"] = model_upsampler(model)
    if weights is not None:
        from backend.models import load

        model = load(weights)
        _check_scale(model.scale, scale, weights)
        trained_with = model.meta.get("normalisation", DEFAULT_SPEC)
        if trained_with != DEFAULT_SPEC:
            print(f"note: {weights.name} was trained with normalisation {trained_with}; "
                  f"this benchmark feeds it {DEFAULT_SPEC}", file=sys.stderr)
        methods[student_label(weights)] = model_upsampler(model)
        if consistency:
            methods[student_label(weights) + CONSISTENCY_SUFFIX] = model_upsampler(model, consistency=True)
    return methods


def card_table_span(card: str, markers: tuple[str, str] = (CARD_BEGIN, CARD_END)) -> tuple[int, int]:
    """Where the replaceable table of a model card starts (after the begin marker) and ends (at the end marker).

    A card without both markers, in order, is an error rather than a silent
    append; main() checks it before the minutes of evaluation, not after. Each
    benchmark that writes into the card has its own pair of markers.
    """
    begin_marker, end_marker = markers
    begin, end = card.find(begin_marker), card.find(end_marker)
    if begin < 0 or end < begin:
        raise ValueError(f"the model card needs the lines {begin_marker!r} and {end_marker!r}, in that order, "
                         "around the table to replace")
    return begin + len(begin_marker), end


def embed_in_card(card: str, table: str, markers: tuple[str, str] = (CARD_BEGIN, CARD_END)) -> str:
    """The model card `card` with its table replaced by `table`, so the card's table is never retyped."""
    start, end = card_table_span(card, markers)
    return f"{card[:start]}\n{table.strip()}\n{card[end:]}"


def add_block_arguments(parser: argparse.ArgumentParser) -> None:
    """--data and --role: the manifest and which of its held-out blocks a benchmark scores."""
    parser.add_argument("--data", type=Path, default=Path("data/manifest.json"), help="data manifest")
    parser.add_argument("--role", default="test", choices=("validation", "test"),
                        help="validation blocks to choose a recipe, test blocks only to report")


def add_report_arguments(parser: argparse.ArgumentParser) -> None:
    """--out and --card: where a benchmark's table goes besides stdout (every benchmark that writes a card)."""
    parser.add_argument("--out", type=Path, help="also write the table to this file")
    parser.add_argument("--card", type=Path,
                        help="also replace the table between this benchmark's markers in this model card (README.md)")


def check_card_argument(card: Optional[Path], markers: tuple[str, str] = (CARD_BEGIN, CARD_END)) -> None:
    """Refuse a --card without the benchmark's markers before the minutes of evaluation, not after."""
    if card:
        try:
            card_table_span(card.read_text(), markers)
        except (OSError, ValueError) as error:
            raise SystemExit(f"--card {card}: {error}") from None


def publish(table: str, args: argparse.Namespace, started: float,
            markers: tuple[str, str] = (CARD_BEGIN, CARD_END)) -> None:
    """Print the table and the time it took, and write it to --out and into --card."""
    print(table)
    print(f"({time.monotonic() - started:.0f} s)", file=sys.stderr)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(table)
    if args.card:
        args.card.write_text(embed_in_card(args.card.read_text(), table, markers))


def _check_scale(found: int, wanted: int, path: Path) -> None:
    if found != wanted:
        raise SystemExit(f"{path} is a x{found} model; this run evaluates x{wanted}")


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.quality", description=__doc__.splitlines()[0])
    add_block_arguments(parser)
    parser.add_argument("--weights", type=Path, help="student weights (safetensors)")
    parser.add_argument("--reference", type=Path, help="reference CNN weights from benchmarks.reference_cnn")
    parser.add_argument("--scale", type=int, default=4, choices=SUPPORTED_SCALES)
    parser.add_argument("--tile", type=int, default=384, help="HR evaluation tile side (NIQE needs >= 2 x 96 px)")
    parser.add_argument("--niqe", type=Path, default=None, help="NIQE parameters (default: beside the manifest)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--sensors", nargs="+", metavar="SENSOR",
                        help="score only these sensor families (e.g. neon): a model trained with "
                             "data.exclude_sensors: [neon] is scored on the family it never saw")
    parser.add_argument("--sensor-lr", action="store_true",
                        help="also score LR from the sensor chain (PSF with MTF at Nyquist 0.1-0.4, "
                             "Poisson-Gaussian noise, JPEG2000; training/data/sensor_degradation.py)")
    parser.add_argument("--consistency", action="store_true",
                        help="also score the student with the consistency option (back-projection to the LR)")
    parser.add_argument("--whole", action="store_true",
                        help="score each held-out block whole instead of --tile tiles (the paper's protocol)")
    add_report_arguments(parser)
    args = parser.parse_args(argv)
    check_card_argument(args.card)
    if args.sensors:
        try:
            scenes_from_manifest(args.data, args.sensors)
        except ValueError as error:
            raise SystemExit(f"--sensors: {error}") from None
    if args.threads:
        torch.set_num_threads(args.threads)
    niqe_model = NiqeModel(args.niqe or args.data.parent / "niqe_pris_params.npz")
    methods = build_methods(args.scale, args.weights, args.reference, args.consistency)
    start = time.monotonic()
    kinds = EVALUATION_LR_KINDS if args.sensor_lr else LR_KINDS
    scores = evaluate(args.data, methods, args.scale, niqe_model, role=args.role, tile=args.tile,
                      sensors=args.sensors, kinds=kinds, whole=args.whole)
    table = format_table(scores, niqe_model, list(methods), args.scale, args.role)
    images = "blocks whole" if args.whole else f"tiles {args.tile} px"
    if args.weights:
        student = student_label(args.weights)
        table += "\n" + format_margins(scores, student, [m for m in methods if m != student])
    table += (f"\nLR: clean = antialiased bicubic; degraded = Real-ESRGAN second-order degradation"
              f"{'; sensor = training.data.sensor_degradation' if args.sensor_lr else ''}, seed "
              f"{DEGRADATION_SEED} + tile index. HR {images}, normalised per scene (2-98 %).\n"
              f"Command: python -m benchmarks.quality {' '.join(argv if argv is not None else sys.argv[1:])}\n")
    publish(table, args, start)
    return 0


if __name__ == "__main__":
    sys.exit(main())
