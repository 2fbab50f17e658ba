"""The rasters users bring, as small real files, and the checks every output made from one must pass.

One matrix, reused by every entry point's test (engine, CLI, server, Processing):
{uint8, uint16, int16, float32} x {1, 3, 4 bands} x {no invalid pixels, a nodata
collar (plus a hole at a different place in each band), an internal mask, NaN
(float32 only)}, plus a 3 x 5000 strip and a 1 x 1 raster. Every band has its own
level, far from the others', so an output band that came from the wrong input
band shows; every band has a colour interpretation and a description to be copied.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
from osgeo import gdal, osr

from rasters import GDAL_TYPES, ORIGIN, PIXEL, UTM33N, smooth_image

DTYPES = (np.uint8, np.uint16, np.int16, np.float32)
BAND_COUNTS = (1, 3, 4)
INVALIDITY = ("none", "nodata", "mask", "nan")
# Per dtype: the level of band 1, the step between bands' levels, the texture's amplitude, the nodata value.
LEVELS = {np.dtype(np.uint8): (30, 60, 12, 0), np.dtype(np.uint16): (1000, 2000, 400, 0),
          np.dtype(np.int16): (-3000, 2000, 400, -9999), np.dtype(np.float32): (0.1, 0.2, 0.04, -9999.0)}
# Colour interpretations by band count: a 4-band raster stored blue, green, red, near-infrared (as Sentinel-2).
COLOURS = {1: (gdal.GCI_GrayIndex,), 3: (gdal.GCI_RedBand, gdal.GCI_GreenBand, gdal.GCI_BlueBand),
           4: (gdal.GCI_BlueBand, gdal.GCI_GreenBand, gdal.GCI_RedBand, gdal.GCI_Undefined)}


@dataclass(frozen=True)
class InputCase:
    """One input raster: its data type, band count, kind of invalid pixels and size in pixels."""

    dtype: type
    bands: int
    invalid: str
    width: int = 37
    height: int = 29

    @property
    def name(self) -> str:
        """A file stem naming the case, e.g. uint16_4b_mask."""
        size = "" if (self.width, self.height) == (37, 29) else f"_{self.width}x{self.height}"
        return f"{np.dtype(self.dtype).name}_{self.bands}b_{self.invalid}{size}"


def input_cases() -> list[InputCase]:
    """Every case of the matrix (NaN for float32 only), then the strip and the single pixel."""
    matrix = [InputCase(dtype, bands, invalid) for dtype in DTYPES for bands in BAND_COUNTS for invalid in INVALIDITY
              if invalid != "nan" or dtype == np.float32]
    return matrix + [InputCase(np.uint16, 3, "nodata", width=3, height=5000), InputCase(np.uint8, 1, "none", 1, 1)]


def write_cases(folder: Path, cases: Optional[Sequence[InputCase]] = None) -> dict[str, str]:
    """Write every case (default: all) into `folder` as GeoTIFFs; returns {case name: path}."""
    folder.mkdir(parents=True, exist_ok=True)
    return {case.name: write_case(folder / f"{case.name}.tif", case) for case in cases or input_cases()}


def write_case(path: Path, case: InputCase) -> str:
    """Write one case as a tiled GeoTIFF in EPSG:32633; a mask goes inside the file, never beside it."""
    dtype = np.dtype(case.dtype)
    base, step, texture, nodata = LEVELS[dtype]
    image = smooth_image(case.bands, case.height, case.width, seed=case.bands)
    levels = base + step * np.arange(case.bands, dtype=np.float64)[:, None, None]
    values = (levels + (image - 0.5) * 2 * texture).astype(dtype)
    invalid = invalid_pixels(case)
    if case.invalid == "nodata":
        values[invalid] = nodata
    elif case.invalid == "nan":
        values[invalid] = np.nan
    dataset = gdal.GetDriverByName("GTiff").Create(str(path), case.width, case.height, case.bands, GDAL_TYPES[dtype],
                                                   options=["TILED=YES", "BLOCKXSIZE=16", "BLOCKYSIZE=16"])
    dataset.SetGeoTransform((ORIGIN[0], PIXEL, 0.0, ORIGIN[1], 0.0, -PIXEL))
    srs = osr.SpatialReference()
    srs.ImportFromEPSG(UTM33N)
    dataset.SetProjection(srs.ExportToWkt())
    for index in range(case.bands):
        band = dataset.GetRasterBand(index + 1)
        band.SetColorInterpretation(COLOURS[case.bands][index])
        band.SetDescription(f"level {index + 1}")
        if case.invalid == "nodata":
            band.SetNoDataValue(nodata)
        band.WriteArray(values[index])
    if case.invalid == "mask":
        gdal.SetConfigOption("GDAL_TIFF_INTERNAL_MASK", "YES")
        try:
            dataset.CreateMaskBand(gdal.GMF_PER_DATASET)
        finally:
            gdal.SetConfigOption("GDAL_TIFF_INTERNAL_MASK", None)
        dataset.GetRasterBand(1).GetMaskBand().WriteArray(np.where(invalid[0], 0, 255).astype(np.uint8))
    dataset.FlushCache()
    dataset = None
    return str(path)


def invalid_pixels(case: InputCase) -> np.ndarray:
    """[bands, h, w] True where a case's pixels are invalid: a collar on the top rows and the left column,
    and a hole that sits elsewhere in each band for nodata and NaN (a mask is one for all bands)."""
    invalid = np.zeros((case.bands, case.height, case.width), dtype=bool)
    if case.invalid == "none" or case.width * case.height == 1:
        return invalid
    invalid[:, : max(1, case.height // 6)] = True
    if case.width > 3:
        invalid[:, :, 0] = True
    for index in range(case.bands):
        shift = 0 if case.invalid == "mask" else 3 * index
        row, column = case.height // 2 + shift, min(case.width // 2 + shift, case.width - 1)
        invalid[index, row:row + 2, max(column - 1, 0):column + 2] = True
    return invalid


def check_output(input_path: str, output_path: str, scale: int = 4, bands: Optional[Sequence[int]] = None) -> None:
    """Assert that `output_path` is the super-resolution of `input_path`'s `bands` (default: all) as promised.

    Band count and order (each output band nearest to its own input band's level),
    data type, colour interpretation and description per band, the georeferencing
    (same origin and CRS, pixel size / scale), every invalid input pixel invalid over
    its scale x scale output block, and every valid one valid.
    """
    source, output = gdal.Open(input_path), gdal.Open(output_path)
    try:
        chosen = list(bands) if bands else list(range(1, source.RasterCount + 1))
        assert output.RasterCount == len(chosen), f"{output_path}: {output.RasterCount} bands, expected {len(chosen)}"
        assert (output.RasterXSize, output.RasterYSize) == (source.RasterXSize * scale, source.RasterYSize * scale)
        x0, px, _, y0, _, py = source.GetGeoTransform()
        assert output.GetGeoTransform() == _approx((x0, px / scale, 0.0, y0, 0.0, py / scale))
        assert osr.SpatialReference(output.GetProjection()).IsSame(osr.SpatialReference(source.GetProjection()))
        levels = [_level(*_values_and_invalid(source.GetRasterBand(b))) for b in range(1, source.RasterCount + 1)]
        for index, number in enumerate(chosen):
            source_band, output_band = source.GetRasterBand(number), output.GetRasterBand(index + 1)
            where = f"{output_path} band {index + 1} (input band {number})"
            assert output_band.DataType == source_band.DataType, f"{where}: data type changed"
            assert output_band.GetColorInterpretation() == source_band.GetColorInterpretation(), where
            assert output_band.GetDescription() == source_band.GetDescription(), where
            lr_values, lr_invalid = _values_and_invalid(source_band)
            hr_values, hr_invalid = _values_and_invalid(output_band)
            expected = lr_invalid.repeat(scale, axis=0).repeat(scale, axis=1)
            assert (hr_invalid == expected).all(), f"{where}: {int((hr_invalid != expected).sum())} pixels whose " \
                                                   "validity differs from their input pixel's"
            if (~hr_invalid).any():
                level = _level(hr_values, hr_invalid)
                nearest = int(np.argmin([abs(level - other) for other in levels])) + 1
                assert nearest == number, f"{where}: its level {level:g} is input band {nearest}'s"
    finally:
        source = output = None


def assert_only(folder: Path, names: Sequence[str]) -> None:
    """Assert that `folder` holds exactly the files `names`: no partial file, no .msk or .aux.xml sidecar."""
    assert sorted(os.listdir(folder)) == sorted(names)


def _values_and_invalid(band: gdal.Band) -> tuple[np.ndarray, np.ndarray]:
    values = band.ReadAsArray()
    invalid = band.GetMaskBand().ReadAsArray() == 0
    if values.dtype.kind == "f":
        invalid |= ~np.isfinite(values)
    return values, invalid


def _level(values: np.ndarray, invalid: np.ndarray) -> float:
    return float(np.median(values[~invalid])) if (~invalid).any() else float("nan")


def _approx(expected: tuple[float, ...]):
    import pytest

    return pytest.approx(expected, rel=1e-12, abs=1e-9)
