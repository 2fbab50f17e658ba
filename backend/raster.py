"""GDAL raster I/O: open and check the input, resolve the window, read tiles, write the output.

Reads only the requested window, tile by tile; writes a tiled, compressed
GeoTIFF block by block to a temporary name beside the target and renames it at
the end, so no half-written output is ever visible under the target name.
"""

from __future__ import annotations

import os
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
from osgeo import gdal, osr

from slimdiffsr_qgis.contract import BadInput

gdal.UseExceptions()
osr.UseExceptions()

# Largest side of the decimated read used to fit a percentile stretch.
STRETCH_SAMPLE_SIDE = 1024


@dataclass(frozen=True)
class Window:
    """A pixel window of the source raster: offset and size in source pixels."""

    x: int
    y: int
    width: int
    height: int


class SourceRaster:
    """An opened input raster with its band mapping; reads [3, h, w] arrays and validity masks."""

    def __init__(self, path: str, bands: Optional[tuple[int, ...]] = None):
        self.path = path
        self.dataset = open_dataset(path)
        ds = self.dataset
        self.geotransform = ds.GetGeoTransform()
        if self.geotransform[2] != 0 or self.geotransform[4] != 0:
            raise BadInput(f"{path} has a rotated or sheared geotransform; warp it to a north-up grid first "
                           "(e.g. gdalwarp) and run again")
        if self.geotransform == (0.0, 1.0, 0.0, 0.0, 0.0, 1.0) and not ds.GetProjection():
            raise BadInput(f"{path} has no georeferencing (no geotransform and no CRS); "
                           "georeference it first so the result can be placed on the map")
        if self.geotransform[5] > 0:
            raise BadInput(f"{path} is stored south-up (positive pixel height); warp it to a north-up grid first")
        self.width, self.height = ds.RasterXSize, ds.RasterYSize
        self.band_numbers = map_bands(ds.RasterCount, bands, path)
        self.output_bands = 1 if len(set(self.band_numbers)) == 1 else 3
        self._bands = [ds.GetRasterBand(b) for b in self.band_numbers]
        self.dtype = np.dtype(gdal.GetDataTypeName(self._bands[0].DataType).lower()
                              .replace("byte", "uint8"))
        if self.dtype not in (np.uint8, np.uint16, np.int16, np.float32):
            raise BadInput(f"{path} has data type {self.dtype}; supported are uint8, uint16, int16 and float32")
        self.nodata = self._bands[0].GetNoDataValue()
        flags = [band.GetMaskFlags() for band in self._bands]
        self.has_mask = any(not (f & gdal.GMF_ALL_VALID) for f in flags)

    @property
    def wkt(self) -> str:
        """The source CRS as full WKT (empty when the raster has none)."""
        return self.dataset.GetProjection()

    def window_for_extent(self, extent: Optional[tuple[float, float, float, float]],
                          extent_crs: Optional[str] = None) -> Window:
        """The source pixel window covering `extent`, snapped to the pixel grid and clipped.

        The extent's corners are transformed from `extent_crs` (when given) to
        the raster's CRS; edges snap to the nearest grid line.
        """
        if extent is None:
            return Window(0, 0, self.width, self.height)
        xmin, ymin, xmax, ymax = extent
        if extent_crs:
            xmin, ymin, xmax, ymax = transform_extent(extent, extent_crs, self.wkt, self.path)
        x0, px, _, y0, _, py = self.geotransform
        if xmax - xmin < abs(px) or ymax - ymin < abs(py):
            raise BadInput(f"extent {_fmt(extent)} is smaller than one pixel of {self.path} "
                           f"({abs(px):g} x {abs(py):g} map units)")
        left = round((xmin - x0) / px)
        right = round((xmax - x0) / px)
        top = round((ymax - y0) / py)
        bottom = round((ymin - y0) / py)
        left, right = max(left, 0), min(right, self.width)
        top, bottom = max(top, 0), min(bottom, self.height)
        if right <= left or bottom <= top:
            raster = self.bounds()
            raise BadInput(f"extent {_fmt(extent)} does not overlap {self.path}, whose extent is "
                           f"{_fmt(raster)} in the raster's CRS")
        return Window(left, top, right - left, bottom - top)

    def bounds(self) -> tuple[float, float, float, float]:
        """(xmin, ymin, xmax, ymax) of the whole raster in its CRS."""
        x0, px, _, y0, _, py = self.geotransform
        return (x0, y0 + py * self.height, x0 + px * self.width, y0)

    def read(self, window: Window, buf_width: Optional[int] = None,
             buf_height: Optional[int] = None) -> tuple[np.ndarray, np.ndarray]:
        """Values [3, h, w] of the mapped bands and a validity mask [h, w] (True = data).

        A smaller buffer size gives GDAL's decimated read (nearest), used for the stretch sample.
        """
        args = dict(xoff=window.x, yoff=window.y, win_xsize=window.width, win_ysize=window.height,
                    buf_xsize=buf_width or window.width, buf_ysize=buf_height or window.height)
        values = np.stack([band.ReadAsArray(**args) for band in self._bands])
        valid = self._mask_valid(args, values.shape[1:])
        if self.dtype == np.float32:
            valid &= np.isfinite(values).all(axis=0)
        return values, valid

    def read_valid(self, window: Window) -> np.ndarray:
        """Validity mask [h, w] of a window (True = data), without reading the values."""
        args = dict(xoff=window.x, yoff=window.y, win_xsize=window.width, win_ysize=window.height)
        valid = self._mask_valid(args, (window.height, window.width))
        if self.dtype == np.float32:
            for band in self._bands:
                valid &= np.isfinite(band.ReadAsArray(**args))
        return valid

    def _mask_valid(self, args: dict, shape: tuple[int, ...]) -> np.ndarray:
        valid = np.ones(shape, dtype=bool)
        if self.has_mask:
            for band in self._bands:
                valid &= band.GetMaskBand().ReadAsArray(**args) > 0
        return valid

    def read_sample(self, window: Window) -> tuple[np.ndarray, np.ndarray]:
        """A decimated read of the whole window, at most STRETCH_SAMPLE_SIDE pixels a side."""
        factor = max(window.width, window.height) / STRETCH_SAMPLE_SIDE
        if factor <= 1:
            return self.read(window)
        return self.read(window, max(1, int(window.width / factor)), max(1, int(window.height / factor)))

    def output_geotransform(self, window: Window, scale: int) -> tuple[float, ...]:
        """Origin of the window, pixel size divided by `scale`."""
        x0, px, _, y0, _, py = self.geotransform
        return (x0 + window.x * px, px / scale, 0.0, y0 + window.y * py, 0.0, py / scale)


def open_dataset(path: str) -> gdal.Dataset:
    """Open a raster read-only, turning GDAL's errors into a message naming the file."""
    if not os.path.exists(path):
        raise BadInput(f"input {path} does not exist")
    if os.path.isdir(path) and not path.lower().endswith((".gdb", ".safe", ".zarr")):
        raise BadInput(f"input {path} is a folder, not a raster file")
    try:
        dataset = gdal.Open(path, gdal.GA_ReadOnly)
    except RuntimeError as error:
        raise BadInput(f"input {path} is not a raster GDAL can read ({_first_line(error)})") from None
    if dataset is None or dataset.RasterCount == 0:
        raise BadInput(f"input {path} has no raster bands")
    return dataset


def map_bands(count: int, bands: Optional[tuple[int, ...]], path: str) -> tuple[int, int, int]:
    """The 3 source bands feeding the model: given, (1, 2, 3), or band 1 replicated."""
    if bands is None:
        if count == 1:
            return (1, 1, 1)
        if count == 2:
            raise BadInput(f"{path} has 2 bands; choose which feed the model with bands, e.g. 1 or 1,2,2")
        return (1, 2, 3)
    for band in bands:
        if band > count:
            raise BadInput(f"band {band} requested but {path} has {count} band{'s' if count > 1 else ''}")
    return (bands[0],) * 3 if len(bands) == 1 else tuple(bands)  # type: ignore[return-value]


def transform_extent(extent: tuple[float, float, float, float], source_crs: str, target_wkt: str,
                     path: str) -> tuple[float, float, float, float]:
    """Bounding box, in the raster's CRS, of an extent given in another CRS (edges densified)."""
    source = osr.SpatialReference()
    try:
        source.SetFromUserInput(source_crs)
    except RuntimeError:
        raise BadInput(f"extent CRS {source_crs!r} is not a CRS GDAL understands (try 'EPSG:4326' or WKT)") from None
    if not target_wkt:
        raise BadInput(f"{path} has no CRS, so an extent in {source_crs!r} cannot be placed on it")
    target = osr.SpatialReference(wkt=target_wkt)
    for srs in (source, target):
        srs.SetAxisMappingStrategy(osr.OAMS_TRADITIONAL_GIS_ORDER)
    transform = osr.CoordinateTransformation(source, target)
    xmin, ymin, xmax, ymax = extent
    steps = np.linspace(0.0, 1.0, 21)
    points = ([(xmin + t * (xmax - xmin), ymin) for t in steps] + [(xmin + t * (xmax - xmin), ymax) for t in steps]
              + [(xmin, ymin + t * (ymax - ymin)) for t in steps] + [(xmax, ymin + t * (ymax - ymin)) for t in steps])
    try:
        moved = np.array([transform.TransformPoint(x, y)[:2] for x, y in points])
    except RuntimeError as error:
        raise BadInput(f"extent {_fmt(extent)} cannot be transformed to the CRS of {path} "
                       f"({_first_line(error)})") from None
    moved = moved[np.isfinite(moved).all(axis=1)]
    if moved.size == 0:
        raise BadInput(f"extent {_fmt(extent)} in {source_crs} lies outside the area where it can be "
                       f"transformed to the CRS of {path}")
    return (float(moved[:, 0].min()), float(moved[:, 1].min()), float(moved[:, 0].max()), float(moved[:, 1].max()))


class OutputRaster:
    """A GeoTIFF written block by block to a temporary file, renamed to the target on commit.

    Use as a context manager: leaving the block with an exception removes the
    temporary file, so a failed or cancelled run leaves nothing behind.
    """

    CREATION_OPTIONS = ["TILED=YES", "BLOCKXSIZE=256", "BLOCKYSIZE=256", "COMPRESS=DEFLATE",
                        "BIGTIFF=IF_SAFER", "INTERLEAVE=PIXEL"]

    def __init__(self, path: str, width: int, height: int, bands: int, dtype: np.dtype,
                 geotransform: tuple[float, ...], wkt: str, nodata: Optional[float],
                 with_mask: bool, metadata: dict[str, str]):
        self.path = path
        self.dtype = np.dtype(dtype)
        self.nodata = nodata
        target = Path(path)
        self.temp_path = str(target.with_name(f".{target.stem}.partial-{uuid.uuid4().hex[:8]}{target.suffix}"))
        options = list(self.CREATION_OPTIONS)
        if self.dtype.kind in "iu":
            options.append("PREDICTOR=2")
        driver = gdal.GetDriverByName("GTiff")
        gdal_type = gdal.GetDataTypeByName({"uint8": "Byte"}.get(self.dtype.name, self.dtype.name.capitalize()))
        self.dataset = driver.Create(self.temp_path, width, height, bands, gdal_type, options=options)
        self.dataset.SetGeoTransform(geotransform)
        if wkt:
            self.dataset.SetProjection(wkt)
        self.dataset.SetMetadata(metadata)
        self._bands = [self.dataset.GetRasterBand(i + 1) for i in range(bands)]
        if nodata is not None:
            for band in self._bands:
                band.SetNoDataValue(nodata)
        self._mask = None
        if with_mask and nodata is None:
            self.dataset.CreateMaskBand(gdal.GMF_PER_DATASET)
            self._mask = self._bands[0].GetMaskBand()

    def write(self, x: int, y: int, values: np.ndarray, valid: Optional[np.ndarray] = None) -> None:
        """Write [C, h, w] values (already in the output dtype) at output pixel (x, y)."""
        if valid is not None and not valid.all():
            if self.nodata is not None:
                values = values.copy()
                values[:, ~valid] = self.nodata
            if self._mask is not None:
                self._mask.WriteArray(valid.astype(np.uint8) * 255, x, y)
        elif self._mask is not None:
            self._mask.WriteArray(np.full(values.shape[1:], 255, np.uint8), x, y)
        for band, plane in zip(self._bands, values):
            band.WriteArray(plane, x, y)

    def commit(self) -> None:
        """Flush, close and move the finished file to its target name."""
        self.dataset.FlushCache()
        self._bands = []
        self._mask = None
        self.dataset = None
        os.replace(self.temp_path, self.path)

    def abort(self) -> None:
        """Close and delete the temporary file."""
        self._bands = []
        self._mask = None
        self.dataset = None
        for leftover in (self.temp_path, self.temp_path + ".msk", self.temp_path + ".aux.xml"):
            if os.path.exists(leftover):
                os.remove(leftover)

    def __enter__(self) -> "OutputRaster":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self.abort()


def check_output_path(output: str, input_path: str, overwrite: bool) -> None:
    """Refuse outputs that would clobber the input, an existing file, or land in an unwritable folder."""
    target = Path(output)
    if target.suffix.lower() not in (".tif", ".tiff"):
        raise BadInput(f"output {output} must be a GeoTIFF file ending in .tif or .tiff")
    if os.path.exists(input_path) and target.exists() and os.path.samefile(target, input_path):
        raise BadInput(f"output {output} is the input file; choose another output path")
    if target.resolve() == Path(input_path).resolve():
        raise BadInput(f"output {output} is the input file; choose another output path")
    folder = target.resolve().parent
    if not folder.is_dir():
        raise BadInput(f"output folder {folder} does not exist; create it first")
    try:  # a real probe: permission bits say nothing for root or on read-only mounts
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError:
        raise BadInput(f"output folder {folder} is not writable; choose another output path") from None
    if target.exists() and not overwrite:
        raise BadInput(f"output {output} already exists; pass --overwrite (or overwrite=true) to replace it")


def set_block_cache(megabytes: int) -> None:
    """Bound GDAL's block cache: its default (5 % of RAM) fills with dirty blocks of a large output."""
    gdal.SetCacheMax(int(megabytes) * 1024 * 1024)


def _fmt(extent: tuple[float, ...]) -> str:
    return "(" + ", ".join(f"{v:.6g}" for v in extent) + ")"


def _first_line(error: Exception) -> str:
    return str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
