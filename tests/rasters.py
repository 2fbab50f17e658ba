"""Small real GeoTIFFs for tests, written with GDAL."""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
from osgeo import gdal, osr

UTM33N = 32633
ORIGIN = (500000.0, 5000000.0)
PIXEL = 10.0

GDAL_TYPES = {np.dtype(np.uint8): gdal.GDT_Byte, np.dtype(np.uint16): gdal.GDT_UInt16,
              np.dtype(np.int16): gdal.GDT_Int16, np.dtype(np.float32): gdal.GDT_Float32}


def smooth_image(bands: int, height: int, width: int, seed: int = 0) -> np.ndarray:
    """A deterministic image with structure at several scales, values in [0, 1]."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    planes = []
    for band in range(bands):
        fx, fy = rng.uniform(0.02, 0.2, size=2)
        plane = 0.5 + 0.25 * np.sin(fx * x + band) * np.cos(fy * y) + 0.1 * rng.standard_normal((height, width))
        planes.append(np.clip(plane, 0, 1))
    return np.stack(planes)


def write_raster(path: str, values: np.ndarray, epsg: int = UTM33N, origin: Sequence[float] = ORIGIN,
                 pixel: float = PIXEL, nodata: Optional[float] = None,
                 geotransform: Optional[Sequence[float]] = None) -> str:
    """Write [bands, h, w] `values` (their dtype) as a GeoTIFF with a north-up grid."""
    bands, height, width = values.shape
    dataset = gdal.GetDriverByName("GTiff").Create(path, width, height, bands, GDAL_TYPES[values.dtype],
                                                   options=["TILED=YES"])
    dataset.SetGeoTransform(tuple(geotransform) if geotransform else (origin[0], pixel, 0.0, origin[1], 0.0, -pixel))
    srs = osr.SpatialReference()
    srs.ImportFromEPSG(epsg)
    dataset.SetProjection(srs.ExportToWkt())
    for index in range(bands):
        band = dataset.GetRasterBand(index + 1)
        if nodata is not None:
            band.SetNoDataValue(nodata)
        band.WriteArray(values[index])
    dataset.FlushCache()
    dataset = None
    return path


def read_raster(path: str) -> tuple[np.ndarray, tuple, str, Optional[float], dict]:
    """(values [bands, h, w], geotransform, wkt, nodata of band 1, metadata)."""
    dataset = gdal.Open(path)
    values = dataset.ReadAsArray()
    if values.ndim == 2:
        values = values[None]
    result = (values, dataset.GetGeoTransform(), dataset.GetProjection(),
              dataset.GetRasterBand(1).GetNoDataValue(), dataset.GetMetadata())
    dataset = None
    return result
