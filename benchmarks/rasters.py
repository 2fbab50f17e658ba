"""Synthetic textured GeoTIFFs of any size for the benchmarks, written in strips to need little memory."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from osgeo import gdal, gdal_array, osr

gdal.UseExceptions()
STRIP_ROWS = 512
# The top of the value range: a byte raster's full range, else Sentinel-2-like reflectance x 10000.
BYTE_TOP = 255
REFLECTANCE_TOP = 10000


def textured_raster(path: Path, side: int, bands: int, dtype: np.dtype) -> None:
    """A side x side GeoTIFF of `bands` bands of `dtype` (UTM 33N, 10 m pixels): per band a smooth
    sine texture of its own period plus noise, so a model and the compressor see image-like content.

    Values span 0..255 for uint8 and 0..10000 (Sentinel-2 reflectance x 10000) for every other type.
    """
    dtype = np.dtype(dtype)
    top = BYTE_TOP if dtype == np.uint8 else REFLECTANCE_TOP
    gdal_type = gdal_array.NumericTypeCodeToGDALTypeCode(dtype)
    dataset = gdal.GetDriverByName("GTiff").Create(str(path), side, side, bands, gdal_type,
                                                   options=["TILED=YES", "COMPRESS=DEFLATE"])
    dataset.SetGeoTransform((500000, 10, 0, 5000000, 0, -10))
    srs = osr.SpatialReference()
    srs.ImportFromEPSG(32633)
    dataset.SetProjection(srs.ExportToWkt())
    rng = np.random.default_rng(0)
    for top_row in range(0, side, STRIP_ROWS):
        rows = min(STRIP_ROWS, side - top_row)
        y, x = np.mgrid[top_row:top_row + rows, 0:side]
        for band in range(bands):
            plane = 0.5 + 0.25 * np.sin(x / (7 + band)) * np.cos(y / 11) + rng.normal(0, 0.08, (rows, side))
            values = np.clip(plane, 0, 1) * top
            dataset.GetRasterBand(band + 1).WriteArray(values.astype(dtype), 0, top_row)
    dataset = None
