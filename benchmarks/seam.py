"""How far tiled inference departs from a single pass, along tile borders and in tile interiors.

Run: .venv/bin/python -m benchmarks.seam WEIGHTS --tile 128 --overlap 16 [--input image.tif] [--size 256]
The student's QGAM sees the whole tile, and its GroupNorms use statistics pooled over
a sample of the window's tiles (the engine's `window_statistics`), so a tiled run is not
exactly a single pass. This measures the mean absolute difference between the engine's tiled,
blended output and one pass over the whole array: in the band along tile borders
(HR pixels covered by two or more tiles, or within `scale` pixels of an inner tile
edge) and in the tile interiors, in units of the output range (1/255 is the target).
Without --input a seeded synthetic scene (smooth fields, sharp edges, fine texture) is used.
With --consistency both runs back-project to the LR (the engine's consistency option): the
single pass over the whole array, the tiled run tile by tile, as the engine does.
"""

from __future__ import annotations

import argparse
from typing import Optional

import numpy as np
import torch
from torch import nn

from backend.consistency import back_project
from backend.engine import super_resolve_array
from slimdiffsr_qgis.contract import BadInput
from backend.models import load
from backend.normalisation import default_spec, resolve
from backend.tiling import tile_grid


def border_band(width: int, height: int, tile: int, overlap: int, scale: int) -> np.ndarray:
    """[H*s, W*s] bool: HR pixels covered by two or more tiles or next to an inner tile edge."""
    coverage = np.zeros((height * scale, width * scale), dtype=np.int32)
    band = np.zeros_like(coverage, dtype=bool)
    for t in tile_grid(width, height, tile, overlap):
        x0, y0, x1, y1 = (v * scale for v in (t.x, t.y, t.x + t.width, t.y + t.height))
        coverage[y0:y1, x0:x1] += 1
        for edge in (x0, x1):
            if 0 < edge < width * scale:
                band[y0:y1, max(0, edge - scale):edge + scale] = True
        for edge in (y0, y1):
            if 0 < edge < height * scale:
                band[max(0, edge - scale):edge + scale, x0:x1] = True
    return band | (coverage > 1)


def seam_report(model: nn.Module, lr01: np.ndarray, tile: int, overlap: int, batch: int = 4,
                consistency: bool = False) -> dict[str, float]:
    """Mean |tiled - single pass| in the border band and the interior, and the largest difference."""
    with torch.inference_mode():
        lr = torch.from_numpy(lr01)[None]
        single = model.eval()(lr).float()
        if consistency:
            single = back_project(single, lr, model.scale)
        single = single[0].numpy()
    tiled = super_resolve_array(model, lr01, tile, overlap, batch=batch, device="cpu", consistency=consistency)
    difference = np.abs(tiled - single).mean(axis=0)
    band = border_band(lr01.shape[2], lr01.shape[1], tile, overlap, model.scale)
    interior = ~band
    return {
        "band_mad": float(difference[band].mean()) if band.any() else 0.0,
        "interior_mad": float(difference[interior].mean()) if interior.any() else 0.0,
        "max_abs": float(difference.max()),
        "band_fraction": float(band.mean()),
    }


def synthetic_scene(size: int, seed: int = 0) -> np.ndarray:
    """[3, size, size] in [0, 1]: smooth fields, a few sharp-edged parcels and roads, fine noise."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size] / size
    scene = np.stack([0.5 + 0.3 * np.sin(2 * np.pi * (f * x + g * y)) for f, g in rng.uniform(0.5, 3, (3, 2))])
    for _ in range(12):
        x0, y0 = rng.integers(0, size, 2)
        w, h = rng.integers(size // 16, size // 4, 2)
        scene[:, y0:y0 + h, x0:x0 + w] = rng.uniform(0, 1, (3, 1, 1))
    for row in rng.integers(0, size, 3):
        scene[:, row:row + 2, :] = 0.9
    scene += rng.normal(0, 0.03, scene.shape)
    return np.clip(scene, 0, 1).astype(np.float32)


def read_input(path: str, size: int, spec: Optional[str]) -> np.ndarray:
    """The top-left size x size window of bands 1-3 of a raster, normalised to [0, 1]."""
    from osgeo import gdal

    dataset = gdal.Open(path)
    if dataset is None:
        raise SystemExit(f"{path}: GDAL cannot open it")
    bands = [dataset.GetRasterBand(min(i, dataset.RasterCount)) for i in (1, 2, 3)]
    window = (min(size, dataset.RasterXSize), min(size, dataset.RasterYSize))
    values = np.stack([band.ReadAsArray(0, 0, *window) for band in bands])
    normalisation = resolve(spec or default_spec(values.dtype), values)
    return normalisation.apply(values)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("weights")
    parser.add_argument("--tile", type=int, default=128, help="LR tile size")
    parser.add_argument("--overlap", type=int, default=16, help="LR overlap")
    parser.add_argument("--input", help="a raster (bands 1-3 used); default: a synthetic scene")
    parser.add_argument("--size", type=int, default=256, help="LR window size")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--consistency", action="store_true", help="both runs back-projected to the LR")
    args = parser.parse_args()
    try:
        model = load(args.weights)
    except BadInput as exc:
        raise SystemExit(str(exc)) from None
    if args.input:
        lr01 = read_input(args.input, args.size, model.meta.get("normalisation"))
    else:
        lr01 = synthetic_scene(args.size)
    report = seam_report(model, lr01, args.tile, args.overlap, args.batch, args.consistency)
    print(
        f"{args.weights}: x{model.scale}, LR {lr01.shape[2]}x{lr01.shape[1]}, tile {args.tile}, overlap {args.overlap}"
        + (", consistency on" if args.consistency else "")
    )
    for key, label in (("band_mad", "border band"), ("interior_mad", "interior")):
        value = report[key]
        print(f"  mean |tiled - single| in {label:<11}: {value:.5f} ({value * 255:.2f}/255)")
    print(f"  largest |tiled - single|: {report['max_abs']:.4f}; band covers {report['band_fraction']:.1%} of the output")
    verdict = "below" if report["band_mad"] < 1 / 255 else "ABOVE"
    print(f"  border band is {verdict} the 1/255 target")


if __name__ == "__main__":
    main()
