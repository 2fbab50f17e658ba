"""Recalibrates an error head to a sensor from a few reference HR images of it: the head's level, not its ranking.

    python -m training.stages.recalibrate_head --student resources/weights/slimdiffsr_x4.safetensors \
        --head resources/weights/slimdiffsr_x4.error.safetensors --reference ortho_a.tif ortho_b.tif \
        --out my_sensor/slimdiffsr_x4.error.safetensors
    python -m training.stages.recalibrate_head ... --sensors neon --role validation --out runs/...  # manifest blocks

Why: a head learns how large the student's errors are on the sensors it trained on, and that level does not
carry to a sensor unlike them (docs/trust.md measures it: on 10 cm aerial imagery a head trained on the two
satellites predicts errors 1.5 times too small; no statistic of the LR we tried predicts the difference). The
ranking of pixels carries better than the level. So for a new sensor, a few reference HR images of it give the
level: each is cut into tiles, reduced to LR by the documented operators (clean antialiased bicubic and the
Real-ESRGAN chain, as the calibration benchmark does), super-resolved as the engine writes (back-projected when
the head learnt that output), and the factor k that puts half of the actual errors below k times the head's
predicted median is folded into the head's output bias. The new file has the same format and cost, records k and its references, and
stays tied to the same student; put it beside the student's weights (`NAME.error.safetensors`) to use it.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Iterator, Optional, Sequence

import numpy as np
from osgeo import gdal
from torch import nn

from backend.models import load
from backend.models.error_head import (ErrorHead, below_median_share, head_output, level_factor, load_head,
                                       output_kind, predict_error, rescaled, save_head)
from backend.models.weights import file_sha256
from backend.normalisation import default_spec, resolve
from slimdiffsr_qgis.contract import BadInput
from training.data.crops import evaluation_tiles, scenes_from_manifest
from training.data.scene_split import ROLES
from training.evaluation.lr import LR_KINDS, image_seed, make_lr
from training.evaluation.scoring import model_upsampler

TILE = 192
"""HR side of a reference tile: the calibration benchmark's tile."""
MIN_TILES = 4
"""Fewer reference tiles than this give a level that moves with the tiles chosen: say so."""


def raster_tiles(path: Path, spec: Optional[str], bands: Sequence[int], tile: int = TILE) -> Iterator[np.ndarray]:
    """[3, tile, tile] tiles in [0, 1] of a reference raster (a single band is repeated to three channels),
    normalised as a run of the student normalises its input, skipping any tile with a nodata pixel."""
    dataset = gdal.Open(str(path))
    if dataset is None:
        raise BadInput(f"{path}: not a raster GDAL can read")
    count = dataset.RasterCount
    chosen = [1] if count == 1 else list(bands)
    if count != 1 and (len(chosen) != 3 or any(not 1 <= b <= count for b in chosen)):
        raise BadInput(f"{path} has {count} bands; give three of them with --bands (1-based), or a one-band raster")
    values = np.stack([dataset.GetRasterBand(b).ReadAsArray() for b in chosen])
    valid = np.ones(values.shape[1:], dtype=bool)
    for index, band in enumerate(chosen):
        nodata = dataset.GetRasterBand(band).GetNoDataValue()
        if nodata is not None:
            valid &= values[index] != nodata
    normalised = resolve(spec or default_spec(values.dtype), values, valid).apply(values)
    normalised = np.repeat(normalised, 3, axis=0) if len(chosen) == 1 else normalised
    for y in range(0, values.shape[1] - tile + 1, tile):
        for x in range(0, values.shape[2] - tile + 1, tile):
            if valid[y:y + tile, x:x + tile].all():
                yield np.clip(normalised[:, y:y + tile, x:x + tile], 0.0, 1.0)


def manifest_tiles(manifest: Path, sensors: Sequence[str], role: str, tile: int = TILE) -> Iterator[np.ndarray]:
    """The `role` tiles of the manifest's blocks of `sensors`, as the calibration benchmark reads them."""
    for item in evaluation_tiles(scenes_from_manifest(manifest, sensors), role=role, tile=tile):
        yield item.hr.astype(np.float32)


def measured_errors(student: nn.Module, head: ErrorHead, tiles: Sequence[np.ndarray], consistency: bool,
                    kinds: Sequence[str] = LR_KINDS) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """(predicted median absolute error [H, W], actual |error| [C, H, W]) of every tile and LR kind, the output
    made as the engine writes it (back-projected with `consistency`)."""
    upsample = model_upsampler(student, consistency)
    predicted, actual = [], []
    for index, hr in enumerate(tiles):
        for kind in kinds:
            lr = make_lr(hr, student.scale, kind, image_seed(index))
            sr = np.clip(upsample(lr), 0.0, 1.0)
            predicted.append(predict_error(head, lr, sr))
            actual.append(np.abs(sr - hr))
    return predicted, actual


def below_median(predicted: Sequence[np.ndarray], actual: Sequence[np.ndarray], factor: float = 1.0) -> float:
    """Share of all channel values whose |error| is below factor times the predicted median (50 % when
    calibrated)."""
    shares = [below_median_share(factor * median, error) for median, error in zip(predicted, actual)]
    return float(np.average(shares, weights=[error.size for error in actual]))


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.stages.recalibrate_head",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--student", type=Path, required=True, help="the student's weights (safetensors)")
    parser.add_argument("--head", type=Path, required=True, help="the error head trained for that student")
    parser.add_argument("--out", type=Path, required=True, help="where to write the recalibrated head")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--reference", type=Path, nargs="+", metavar="RASTER",
                        help="HR reference rasters of the sensor (GeoTIFF or any GDAL raster), at least 192 px")
    source.add_argument("--sensors", nargs="+", metavar="FAMILY",
                        help="instead: the manifest's blocks of these families")
    parser.add_argument("--role", default="validation", choices=ROLES, help="with --sensors: the blocks' role")
    parser.add_argument("--data", type=Path, default=Path("data/manifest.json"), help="with --sensors: data manifest")
    parser.add_argument("--bands", type=int, nargs=3, default=(1, 2, 3), metavar="B",
                        help="with --reference: the three bands (1-based) of a multi-band raster, in the "
                             "student's order")
    args = parser.parse_args(argv)
    if args.out.resolve() == args.head.resolve():
        parser.error("--out must differ from --head: the head it starts from stays as it is")
    try:
        head = load_head(args.head, file_sha256(str(args.student)))
        student = load(args.student)
        if args.reference:
            spec = student.meta.get("normalisation")
            tiles = [tile for path in args.reference for tile in raster_tiles(path, spec, args.bands)]
            reference = "reference rasters " + ", ".join(path.name for path in args.reference)
        else:
            tiles = list(manifest_tiles(args.data, args.sensors, args.role))
            reference = f"the {args.role} blocks of {', '.join(args.sensors)} ({args.data})"
    except BadInput as exc:
        raise SystemExit(str(exc)) from None
    if not tiles:
        raise SystemExit(f"{reference}: no {TILE} x {TILE} px tile without nodata; give larger reference images")
    if len(tiles) < MIN_TILES:
        print(f"only {len(tiles)} reference tile(s) of {TILE} px: the level will move with the tiles chosen",
              file=sys.stderr)
    consistency = head_output(head) == output_kind(True)
    predicted, actual = measured_errors(student, head, tiles, consistency)
    factor = level_factor(predicted, actual)
    before, after = below_median(predicted, actual), below_median(predicted, actual, factor)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    recalibrated = rescaled(head, factor, f"{reference}: {len(tiles)} tiles")
    save_head(recalibrated, args.out, file_sha256(str(args.student)), recalibrated.meta)
    print(f"wrote {args.out}: predicted error x {factor:.3f} from {len(tiles)} tiles of {reference}; values below "
          f"the predicted median {100 * before:.1f} % -> {100 * after:.1f} % on them")
    return 0


if __name__ == "__main__":
    sys.exit(main())
