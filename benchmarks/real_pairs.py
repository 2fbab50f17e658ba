"""Quality on real cross-resolution pairs: a sensor's coarse bands super-resolved x2 against its own finer band.

Synthetic LR (a downsampled HR) only tells how well a model inverts the
downsampling it was trained on. A real pair asks the question a user has:
given what the sensor recorded at 20 m (30 m), how close is the output to
what the same sensor recorded at 10 m (15 m)? The pairs (data/manifest.json
"pairs", written by `python -m training.data.sources prepare`):

- Sentinel-2 B8A (20 m, 865 nm) x2 against B8 (10 m, 842 nm), one band;
- Landsat 8 red/green/blue (30 m) x2 against the panchromatic B8 (15 m).

The bands differ in spectral response and radiometric scale, so each output
is fitted to its reference per tile before scoring, by least squares: a gain
and an offset for one band; for Landsat's three output bands against the one
PAN band, a linear combination of the three plus an offset (the PAN's
500-680 nm response weights blue, green and red unequally, and a plain mean
would charge every method for that spectral mismatch; the fit has 4
parameters for thousands of pixels, and every method gets the same one).
Scores on the fitted output: PSNR against the reference (both normalised
2-98 % per file, the engine's rule), and the correlation of the two images'
Laplacians (3x3), which asks whether the detail a method puts at the finest
scale is where the real detail is (a band's gain and offset leave the
correlation unchanged; the Landsat band weights of the fit do not).

Methods: GDAL cubic and lanczos x2, and each `--weights` file through the
engine's tiled inference, one pass for a single band (replicated to three
channels, the output the mean of three, as the engine does for every non-RGB
band) or the RGB triplet together. A x2 model is scored directly. A x4 model
cannot make a x2 output; it is scored by reducing its x4 output by 2 with
the antialiased bicubic reduction (the clean-LR operator of
`training.data.realesrgan_degradation`): that is what a user with x4 weights does to get the
sensor's finer grid, and it keeps the x4 detail down to the frequencies the
x2 reference holds. The method's label says so, and a control row, GDAL
lanczos x4 reduced the same way, shows what the reduction alone costs: the
model's fair comparison is with that row as well as with lanczos x2.

Landsat's 15 m grid is offset by half a 15 m pixel from the 30 m grid
(`training.data.band_files`): each output is averaged over 2x2 (stride 1) onto
the PAN's pixel centres before the fit, the same for every method.

Validation blocks choose a recipe, test blocks report it. Tiles of `--tile`
LR pixels; tiles with nodata or more than 10 % cloud-bright pixels are skipped;
a border of `--border` HR pixels is left out of the fit and the scores.

    python -m benchmarks.real_pairs --weights resources/weights/slimdiffsr_x4.safetensors --role test \
        [--card resources/weights/README.md]
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from backend.engine import RGB_PASS
from benchmarks.quality import (CONSISTENCY_SUFFIX, add_block_arguments, add_report_arguments, check_card_argument,
                                gdal_upsample, publish, rounded_down)
from training.data.pairs import PairFiles, pair_entries
from training.data.scene_split import ROLES
from training.data.realesrgan_degradation import bicubic_downsample
from training.evaluation.scoring import model_upsampler

Upsampler = Callable[[np.ndarray], np.ndarray]
CARD_MARKERS = ("<!-- begin: table written by benchmarks.real_pairs --card -->",
                "<!-- end: table written by benchmarks.real_pairs --card -->")
PAIR_SCALE = 2
LAPLACIAN = np.array([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]])


@dataclass(frozen=True)
class PairTile:
    """One LR tile of a pair, normalised, and its HR reference."""

    pair: str
    sensor: str
    lr: np.ndarray  # [C, t, t] in the LR's normalised units
    hr: np.ndarray  # [2t, 2t] (or [2t-1, 2t-1] with an HR offset of 0.5)
    hr_offset: float


def pair_tiles(manifest: Path, role: str = "test", tile: int = 96,
               names: Optional[Sequence[str]] = None) -> Iterator[PairTile]:
    """Every `role` tile of the manifest's pairs (of `names` only, when given), in pair and raster order."""
    if role not in ROLES:
        raise ValueError(f"unknown role {role!r}; use one of {', '.join(ROLES)}")
    for entry in pair_entries(manifest, names):
        yield from _tiles_of(entry, Path(manifest).parent, role, tile)


def _tiles_of(entry: dict, root: Path, role: str, tile: int) -> Iterator[PairTile]:
    pair = PairFiles(entry, root)
    for block in pair.blocks(role):
        for y in range(block.y, block.y + block.height - tile + 1, tile):
            for x in range(block.x, block.x + block.width - tile + 1, tile):
                lr, hr, usable = pair.read(x, y, tile)
                if usable:
                    yield PairTile(pair.name, pair.sensor, lr, hr, pair.offset)


def onto_reference(output: np.ndarray, hr_offset: float) -> np.ndarray:
    """A [C, 2t, 2t] output on the reference's pixel centres: itself, or its 2x2 means (stride 1) for an HR
    grid offset by half a pixel."""
    if not hr_offset:
        return output
    return F.avg_pool2d(torch.from_numpy(output)[None], 2, stride=1)[0].numpy()


def fit_to_reference(output: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """The least-squares linear combination of the output's bands plus an offset that best matches
    `reference` [H, W] (a gain and offset for one band)."""
    design = np.concatenate([output.reshape(output.shape[0], -1), np.ones((1, reference.size))]).T.astype(np.float64)
    coefficients, *_ = np.linalg.lstsq(design, reference.reshape(-1).astype(np.float64), rcond=None)
    return (design @ coefficients).reshape(reference.shape)


def laplacian(image: np.ndarray) -> np.ndarray:
    """The 3x3 Laplacian of [H, W], valid part only ([H-2, W-2])."""
    out = np.zeros((image.shape[0] - 2, image.shape[1] - 2))
    for dy in range(3):
        for dx in range(3):
            if LAPLACIAN[dy, dx]:
                out += LAPLACIAN[dy, dx] * image[dy:dy + out.shape[0], dx:dx + out.shape[1]]
    return out


def score(output: np.ndarray, reference: np.ndarray, border: int) -> tuple[float, float]:
    """(PSNR in dB, Laplacian correlation) of the output fitted to the reference, `border` pixels left out."""
    inner = (slice(border, reference.shape[0] - border), slice(border, reference.shape[1] - border))
    target = reference[inner].astype(np.float64)
    fitted = fit_to_reference(output[(slice(None), *inner)], target)
    mse = float(np.mean((fitted - target) ** 2))
    psnr = math.inf if mse == 0 else 10.0 * math.log10(1.0 / mse)
    detail, real = laplacian(fitted).ravel(), laplacian(target).ravel()
    return psnr, float(np.corrcoef(detail, real)[0, 1])


def model_method(weights: Path, channels: int, consistency: bool = False) -> tuple[str, Upsampler]:
    """(label, x2 upsampler) of a weights file for `channels` LR bands, with the engine's consistency option
    when asked; x4 models reduced by 2 (module docstring)."""
    from backend.models import load

    model = load(weights)
    passes = RGB_PASS if channels == 3 else tuple((c,) for c in range(channels))
    upsample = model_upsampler(model, consistency, passes)
    label = f"SlimDiffSR ({weights.name})" + (CONSISTENCY_SUFFIX if consistency else "")
    if model.scale == PAIR_SCALE:
        return label, upsample
    if model.scale == 2 * PAIR_SCALE:
        return f"{label} x4, reduced x2", reduced(upsample)
    raise SystemExit(f"{weights} is a x{model.scale} model; real pairs are x2 (x2 weights, or x4 reduced by 2)")


def reduced(upsample_x4: Upsampler) -> Upsampler:
    """A x4 upsampler made x2: its output reduced by 2 with the antialiased bicubic."""
    return lambda lr: bicubic_downsample(torch.from_numpy(upsample_x4(lr))[None], 2)[0].numpy()


LANCZOS_REDUCED = "GDAL lanczos x4, reduced x2"


def evaluate(manifest: Path, weights: Sequence[Path], role: str = "test", tile: int = 96, border: int = 8,
             names: Optional[Sequence[str]] = None,
             consistency: bool = False) -> tuple[dict[tuple[str, str], list[tuple[float, float]]], list]:
    """Per (pair, method), the (PSNR, Laplacian correlation) of each tile; and the method labels in order."""
    scores: dict[tuple[str, str], list[tuple[float, float]]] = defaultdict(list)
    labels: list[str] = ["GDAL cubic", "GDAL lanczos"]
    models: dict[tuple[Path, int], tuple[str, Upsampler]] = {}
    for item in pair_tiles(manifest, role, tile, names):
        methods: dict[str, Upsampler] = {
            "GDAL cubic": lambda lr: gdal_upsample(lr, PAIR_SCALE, "cubic"),
            "GDAL lanczos": lambda lr: gdal_upsample(lr, PAIR_SCALE, "lanczos"),
        }
        for path in weights:
            for consistent in (False, True) if consistency else (False,):
                key = (path, item.lr.shape[0], consistent)
                if key not in models:
                    models[key] = model_method(path, item.lr.shape[0], consistent)
                label, upsample = models[key]
                if label.endswith("reduced x2"):
                    methods[LANCZOS_REDUCED] = reduced(lambda lr: gdal_upsample(lr, 2 * PAIR_SCALE, "lanczos"))
                methods[label] = upsample
        labels += [label for label in methods if label not in labels]
        for label, upsample in methods.items():
            output = onto_reference(upsample(item.lr.astype(np.float32)), item.hr_offset)
            scores[(item.pair, label)].append(score(output, item.hr, border))
    return scores, labels


def format_table(scores: dict[tuple[str, str], list[tuple[float, float]]], labels: Sequence[str],
                 role: str) -> str:
    """Per pair and method: tiles, mean PSNR and mean Laplacian correlation; then each model's lead over lanczos."""
    pairs = sorted({pair for pair, _ in scores})
    lines = [f"x2 on the real pairs' {role} blocks, after a per-tile least-squares fit to the reference: "
             "PSNR and Laplacian correlation, higher is better.", "",
             "| pair | tiles | method | PSNR (dB) | Laplacian correlation |", "|---|---:|---|---:|---:|"]
    for pair in pairs:
        for label in labels:
            values = np.array(scores[(pair, label)])
            psnr, correlation = values.mean(axis=0)
            lines.append(f"| {pair} | {len(values)} | {label} | {psnr:.2f} | {correlation:.3f} |")
    models = [label for label in labels if not label.startswith("GDAL") or label == LANCZOS_REDUCED]
    if models:
        lines += ["", "Lead over GDAL lanczos (PSNR in dB and Laplacian correlation, rounded down; positive = ahead):",
                  "", "| pair | method | PSNR lead | correlation lead |", "|---|---|---:|---:|"]
        for pair in pairs:
            lanczos = np.array(scores[(pair, "GDAL lanczos")]).mean(axis=0)
            for label in models:
                mean = np.array(scores[(pair, label)]).mean(axis=0)
                lines.append(f"| {pair} | {label} | {rounded_down(mean[0] - lanczos[0]):+.3f} | "
                             f"{rounded_down(mean[1] - lanczos[1]):+.3f} |")
    return "\n".join(lines) + "\n"


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.real_pairs", description=__doc__.splitlines()[0])
    add_block_arguments(parser)
    parser.add_argument("--weights", type=Path, nargs="*", default=[], help="student weights (x2, or x4 reduced by 2)")
    parser.add_argument("--pairs", nargs="+", metavar="PAIR", help="only these pairs (default: every pair)")
    parser.add_argument("--tile", type=int, default=96, help="LR tile side")
    parser.add_argument("--border", type=int, default=8, help="HR pixels left out at each tile edge")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--consistency", action="store_true",
                        help="also score the weights with the consistency option (back-projection to the LR)")
    add_report_arguments(parser)
    args = parser.parse_args(argv)
    check_card_argument(args.card, CARD_MARKERS)
    try:
        pair_entries(args.data, args.pairs)
    except (OSError, ValueError) as error:
        raise SystemExit(f"--data {args.data}: {error}") from None
    if args.threads:
        torch.set_num_threads(args.threads)
    start = time.monotonic()
    scores, labels = evaluate(args.data, args.weights, args.role, args.tile, args.border, args.pairs,
                              args.consistency)
    table = format_table(scores, labels, args.role)
    table += (f"\nLR tiles {args.tile} px, HR border {args.border} px left out; x4 weights reduced by 2 with the "
              "antialiased bicubic; Landsat outputs averaged 2x2 onto the PAN's half-pixel-offset grid, and fitted "
              "to it as a linear combination of their three bands.\n"
              f"Command: python -m benchmarks.real_pairs {' '.join(argv if argv is not None else sys.argv[1:])}\n")
    publish(table, args, start, CARD_MARKERS)
    return 0


if __name__ == "__main__":
    sys.exit(main())
