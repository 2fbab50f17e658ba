"""Score any super-resolved raster against its input: the consistency figures of `backend.consistency` from files.

    slimdiffsr check OUTPUT.tif --input INPUT.tif

Works for this tool's outputs and for any other tool's, as long as the output lies on a grid whose pixel
size divides the input's by a whole number. The input window under the output's extent is read (snapped to
the input grid); a large output is scored on its central CHECK_SIDE x CHECK_SIDE input pixels, which
bounds the memory and time of a check while keeping every figure a mean over many thousand pixels. The
engine scores every output it writes the same way and records the figures in the output's metadata.
"""

from __future__ import annotations

from typing import Callable, Optional

import numpy as np
from osgeo import gdal

from slimdiffsr_qgis.contract import BadInput

from .consistency import ConsistencyFigures, consistency_figures
from .raster import SourceRaster, Window, open_dataset

# Largest side, in input pixels, of the part of an output that a check reads: enough pixels for stable
# means and a sharp correlation peak, little enough to add well under a second to a run.
CHECK_SIDE = 256
METADATA_PREFIX = "SLIMDIFFSR_"
CONSISTENCY_PREFIX = "SLIMDIFFSR_CONSISTENCY_"
BANDS_KEY = "SLIMDIFFSR_BANDS"


def check_files(output: str, input_path: str, bands: Optional[tuple[int, ...]] = None) -> ConsistencyFigures:
    """Consistency figures of `output` against `input_path`.

    bands: the input bands the output's bands were made from, in order; by default this tool's record of
    them in the output's metadata, else the first input bands, one per output band.
    """
    dataset = open_dataset(output)
    try:
        scale = _scale(dataset, input_path, output)
        bands = bands or _recorded_bands(dataset) or tuple(range(1, dataset.RasterCount + 1))
        if len(bands) != dataset.RasterCount:
            raise BadInput(f"{output} has {dataset.RasterCount} band(s) but {len(bands)} input band(s) were named; "
                           "give one input band per output band")
        with SourceRaster(input_path, bands) as source:
            window = source.window_for_extent(_bounds(dataset))
            origin = _output_offset(dataset, source, window, scale, output)

            def read_output(x: int, y: int, width: int, height: int) -> np.ndarray:
                return dataset.ReadAsArray(origin[0] + x, origin[1] + y, width, height)

            return figures_of(source, window, scale, read_output)
    except RuntimeError as error:
        raise BadInput(f"cannot read {output} or {input_path} ({str(error).strip()})") from None
    finally:
        dataset = None


def figures_of(source: SourceRaster, window: Window, scale: int,
               read_output: Callable[[int, int, int, int], np.ndarray]) -> ConsistencyFigures:
    """Figures over the central CHECK_SIDE² input pixels of `window`; read_output(x, y, w, h) gives output
    pixels relative to the output pixel at the window's top-left corner. Shared by `check` and by the
    engine, which scores every output it writes before committing it."""
    crop = central(window)
    lr, valid = source.read(crop)
    hr = read_output((crop.x - window.x) * scale, (crop.y - window.y) * scale, crop.width * scale,
                     crop.height * scale)
    hr = np.asarray(hr, dtype=np.float32).reshape(lr.shape[0], crop.height * scale, crop.width * scale)
    return consistency_figures(lr.astype(np.float32), hr, scale, valid.all(axis=0))


def central(window: Window) -> Window:
    """The central part of `window`, at most CHECK_SIDE input pixels a side."""
    width, height = min(window.width, CHECK_SIDE), min(window.height, CHECK_SIDE)
    return Window(window.x + (window.width - width) // 2, window.y + (window.height - height) // 2, width, height)


def _scale(dataset: gdal.Dataset, input_path: str, output: str) -> int:
    """Input pixel size over output pixel size, which must be a whole number of at least 2."""
    reference = open_dataset(input_path)
    ratio = reference.GetGeoTransform()[1] / dataset.GetGeoTransform()[1]
    reference = None
    scale = round(ratio)
    if scale < 2 or abs(ratio - scale) > 1e-6 * ratio:
        raise BadInput(f"the pixels of {output} are not a whole fraction (x2, x4, ...) of those of {input_path} "
                       f"(ratio {ratio:.6g}); warp the output to a grid that divides the input's")
    return scale


def _recorded_bands(dataset: gdal.Dataset) -> Optional[tuple[int, ...]]:
    recorded = dataset.GetMetadataItem(BANDS_KEY)
    return tuple(int(b) for b in recorded.split(",")) if recorded else None


def _bounds(dataset: gdal.Dataset) -> tuple[float, float, float, float]:
    x0, px, _, y0, _, py = dataset.GetGeoTransform()
    return (x0, y0 + py * dataset.RasterYSize, x0 + px * dataset.RasterXSize, y0)


def _output_offset(dataset: gdal.Dataset, source: SourceRaster, window: Window, scale: int,
                   output: str) -> tuple[int, int]:
    """The output pixel at the input window's top-left corner; the window must lie inside the output."""
    ox, opx, _, oy, _, opy = dataset.GetGeoTransform()
    x0, px, _, y0, _, py = source.geotransform
    column = round((x0 + window.x * px - ox) / opx)
    row = round((y0 + window.y * py - oy) / opy)
    if (column < 0 or row < 0 or column + window.width * scale > dataset.RasterXSize
            or row + window.height * scale > dataset.RasterYSize):
        raise BadInput(f"{output} does not cover whole input pixels of the window it lies over; "
                       "check that it was made from this input")
    return column, row


def describe_output(path: str) -> str:
    """What a slimdiffsr output says about itself: size, provenance and its recorded consistency figures."""
    dataset = open_dataset(path)
    width, height, count = dataset.RasterXSize, dataset.RasterYSize, dataset.RasterCount
    items = {key: value for key, value in dataset.GetMetadata().items() if key.startswith(METADATA_PREFIX)}
    dataset = None
    if not items:
        raise BadInput(f"{path} carries no SlimDiffSR metadata; to score another tool's output against its "
                       f"input, run: slimdiffsr check {path} --input INPUT")
    lines = [f"{path}: {width} x {height} px, {count} band(s)"]
    lines += [f"{key[len(METADATA_PREFIX):].lower()}: {value}" for key, value in sorted(items.items())
              if not key.startswith(CONSISTENCY_PREFIX)]
    figures = ConsistencyFigures.from_metadata(items)
    lines += ["consistency with the input (its central part):"]
    lines += ["  " + line for line in figures.describe()] if figures else ["  not recorded"]
    return "\n".join(lines)
