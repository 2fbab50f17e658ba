"""GDAL raster I/O: open and check the input, resolve the window, read tiles, write the output.

Reads only the requested window, tile by tile; writes a tiled, compressed
GeoTIFF block by block to a partial file beside the target and moves it there
at the end without ever replacing a file the run did not mean to replace, so no
half-written output is ever visible under the target name. GDAL's errors
(a truncated file, a VRT whose source is gone, a full disk) become BadInput
messages that name the file and carry GDAL's own words.
"""

from __future__ import annotations

import errno
import glob
import os
import sys
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
from osgeo import gdal, osr

from slimdiffsr_qgis.contract import BadInput, glob_escape, partial_glob, partial_owner, partial_path

gdal.UseExceptions()
osr.UseExceptions()

# Largest side of the decimated read used to fit a percentile stretch.
STRETCH_SAMPLE_SIDE = 1024
SUPPORTED_DTYPES = (np.uint8, np.uint16, np.int16, np.float32)


@dataclass(frozen=True)
class Window:
    """A pixel window of the source raster: offset and size in source pixels."""

    x: int
    y: int
    width: int
    height: int


@dataclass(frozen=True)
class OutputBand:
    """What an output band carries over from its input band: colour interpretation, description, nodata."""

    colour: int
    description: str
    nodata: Optional[float]


class SourceRaster:
    """An opened input raster and its selected bands; reads [N, h, w] values with per-band validity.

    Close it (or use it as a context manager) so GDAL's errors on closing are handled, not printed.
    """

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
        self.band_numbers = select_bands(ds.RasterCount, bands, path)
        self.colours = tuple(gdal.GetColorInterpretationName(ds.GetRasterBand(b).GetColorInterpretation()).lower()
                             for b in range(1, ds.RasterCount + 1))
        self._bands = [ds.GetRasterBand(b) for b in self.band_numbers]
        dtypes = sorted({_numpy_dtype(band).name for band in self._bands})
        if len(dtypes) > 1:
            raise BadInput(f"the selected bands of {path} have different data types ({', '.join(dtypes)}); "
                           "select bands of one type")
        self.dtype = _numpy_dtype(self._bands[0])
        if self.dtype not in SUPPORTED_DTYPES:
            raise BadInput(f"{path} has data type {self.dtype}; supported are uint8, uint16, int16 and float32")
        self.nodata = tuple(band.GetNoDataValue() for band in self._bands)
        self._flags = [band.GetMaskFlags() for band in self._bands]
        self.may_be_invalid = self.dtype.kind == "f" or any(not f & gdal.GMF_ALL_VALID for f in self._flags)

    @property
    def wkt(self) -> str:
        """The source CRS as full WKT (empty when the raster has none)."""
        return self.dataset.GetProjection()

    def output_bands(self, dtype: np.dtype) -> list[OutputBand]:
        """The output's bands: each input band's colour and description, and its nodata value; a float
        output marks invalid pixels of a band without one as NaN (declared as the band's nodata)."""
        float_output = np.dtype(dtype).kind == "f"
        return [OutputBand(band.GetColorInterpretation(), band.GetDescription(),
                           nodata if nodata is not None or not (float_output and self.may_be_invalid)
                           else float("nan"))
                for band, nodata in zip(self._bands, self.nodata)]

    def needs_mask(self, dtype: np.dtype) -> bool:
        """True when some invalid pixels have no nodata value to be written as: they go into a mask band."""
        if not self.may_be_invalid:
            return False
        return any(band.nodata is None for band in self.output_bands(dtype))

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
        """Values [N, h, w] of the selected bands and their validity [N, h, w] (True = data).

        A band's pixel is invalid where its mask says so (nodata, an internal or
        per-band mask, alpha) or, for floats, where it is NaN or infinite. A
        smaller buffer size gives GDAL's decimated read (nearest), used for the stretch sample.
        """
        args = dict(xoff=window.x, yoff=window.y, win_xsize=window.width, win_ysize=window.height,
                    buf_xsize=buf_width or window.width, buf_ysize=buf_height or window.height)
        values = np.stack([self._read(band, args) for band in self._bands])
        valid = np.ones(values.shape, dtype=bool)
        dataset_mask = None
        for index, (band, flags) in enumerate(zip(self._bands, self._flags)):
            if flags & gdal.GMF_ALL_VALID:
                continue
            if flags & gdal.GMF_NODATA:
                valid[index] = _differs(values[index], self.nodata[index])
            elif flags & gdal.GMF_PER_DATASET:
                if dataset_mask is None:
                    dataset_mask = self._read(band.GetMaskBand(), args) > 0
                valid[index] = dataset_mask
            else:
                valid[index] = self._read(band.GetMaskBand(), args) > 0
        if self.dtype.kind == "f":
            valid &= np.isfinite(values)
        return values, valid

    def read_valid(self, window: Window) -> np.ndarray:
        """Validity [N, h, w] of a window (True = data)."""
        if not self.may_be_invalid:
            return np.ones((len(self._bands), window.height, window.width), dtype=bool)
        return self.read(window)[1]

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

    def close(self) -> None:
        """Release the bands, then the dataset (a band used after its dataset is freed crashes GDAL 3.6)."""
        self._bands = []
        if getattr(self, "dataset", None) is not None:
            _drop_dataset(self)

    def _read(self, band: gdal.Band, args: dict) -> np.ndarray:
        try:
            return band.ReadAsArray(**args)
        except RuntimeError as error:
            raise BadInput(f"input {self.path} could not be read (GDAL: {_first_line(error)}); the file may be "
                           "truncated or damaged, or a file it refers to is missing: check it (e.g. "
                           "gdalinfo -checksum) and run again") from None

    def __enter__(self) -> "SourceRaster":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close()


def open_dataset(path: str) -> gdal.Dataset:
    """Open a raster read-only: a file, a GDAL connection string (NETCDF:"f.nc":red) or a /vsi path.

    GDAL's errors become a message naming the input; a container of subdatasets
    (NetCDF, HDF) is refused with the names to choose from.
    """
    try:
        dataset = gdal.Open(path, gdal.GA_ReadOnly)
    except RuntimeError as error:
        if os.path.isdir(path):
            raise BadInput(f"input {path} is a folder, not a raster file") from None
        if not os.path.exists(path) and not _gdal_name(path):
            raise BadInput(f"input {path} does not exist") from None
        raise BadInput(f"input {path} is not a raster GDAL can read ({_first_line(error)})") from None
    if dataset is None:
        raise BadInput(f"input {path} is not a raster GDAL can read")
    if dataset.RasterCount == 0:
        names = [name for name, _ in dataset.GetSubDatasets()]
        if names:
            raise BadInput(f"input {path} holds {len(names)} subdatasets and no bands of its own; "
                           f"give one of them as the input: {', '.join(names)}")
        raise BadInput(f"input {path} has no raster bands")
    return dataset


def select_bands(count: int, bands: Optional[tuple[int, ...]], path: str) -> tuple[int, ...]:
    """The 1-based input bands written to the output: the given ones (checked), or every band."""
    if bands is None:
        return tuple(range(1, count + 1))
    for band in bands:
        if band > count:
            raise BadInput(f"band {band} requested but {path} has {count} band{'s' if count > 1 else ''}")
    return tuple(bands)


def map_bands(count: int, bands: Optional[tuple[int, ...]], path: str) -> tuple[int, int, int]:
    """The 3 source bands a training image feeds the model: given, (1, 2, 3), or band 1 replicated."""
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
    """A GeoTIFF written block by block to a partial file, moved to the target on commit.

    Use as a context manager: leaving the block with an exception removes the
    partial file and its sidecars, so a failed or cancelled run leaves nothing behind.
    """

    CREATION_OPTIONS = ["TILED=YES", "BLOCKXSIZE=256", "BLOCKYSIZE=256", "COMPRESS=DEFLATE",
                        "BIGTIFF=IF_SAFER", "INTERLEAVE=PIXEL"]

    def __init__(self, path: str, width: int, height: int, dtype: np.dtype, geotransform: tuple[float, ...],
                 wkt: str, bands: Sequence[OutputBand], with_mask: bool, metadata: dict[str, str]):
        self.path = path
        self.folder = str(Path(path).resolve().parent)
        self.dtype = np.dtype(dtype)
        self.nodata = [band.nodata for band in bands]
        self.temp_path = partial_path(path, os.getpid(), uuid.uuid4().hex[:8])
        options = list(self.CREATION_OPTIONS)
        if self.dtype.kind in "iu":
            options.append("PREDICTOR=2")
        gdal_type = gdal.GetDataTypeByName({"uint8": "Byte"}.get(self.dtype.name, self.dtype.name.capitalize()))
        self._bands: list[gdal.Band] = []
        self._mask: Optional[gdal.Band] = None
        try:
            self.dataset = gdal.GetDriverByName("GTiff").Create(self.temp_path, width, height, len(bands),
                                                                gdal_type, options=options)
            self.dataset.SetGeoTransform(geotransform)
            if wkt:
                self.dataset.SetProjection(wkt)
            self.dataset.SetMetadata(metadata)
            self._bands = [self.dataset.GetRasterBand(i + 1) for i in range(len(bands))]
            for target, band in zip(self._bands, bands):
                target.SetColorInterpretation(band.colour)
                if band.description:
                    target.SetDescription(band.description)
                if band.nodata is not None:
                    target.SetNoDataValue(band.nodata)
            if with_mask:
                self._create_internal_mask()
        except RuntimeError as error:
            self.abort()
            raise self._write_error(error) from None

    def _create_internal_mask(self) -> None:
        # GDAL 3.6 writes a mask to a .msk sidecar unless told to keep it inside the TIFF.
        previous = gdal.GetThreadLocalConfigOption("GDAL_TIFF_INTERNAL_MASK", None)
        gdal.SetThreadLocalConfigOption("GDAL_TIFF_INTERNAL_MASK", "YES")
        try:
            self.dataset.CreateMaskBand(gdal.GMF_PER_DATASET)
        finally:
            gdal.SetThreadLocalConfigOption("GDAL_TIFF_INTERNAL_MASK", previous)
        self._mask = self._bands[0].GetMaskBand()

    def write(self, x: int, y: int, values: np.ndarray, valid: Optional[np.ndarray] = None) -> None:
        """Write [N, h, w] values (already in the output dtype) at output pixel (x, y).

        valid [N, h, w]: a band's invalid pixels are written as its nodata value;
        the mask band, if any, is valid where every band is.
        """
        try:
            if valid is not None and not valid.all():
                values = values.copy()
                for plane, band_valid, nodata in zip(values, valid, self.nodata):
                    if nodata is not None:
                        plane[~band_valid] = nodata
                if self._mask is not None:
                    self._mask.WriteArray(valid.all(axis=0).astype(np.uint8) * 255, x, y)
            elif self._mask is not None:
                self._mask.WriteArray(np.full(values.shape[1:], 255, np.uint8), x, y)
            for band, plane in zip(self._bands, values):
                band.WriteArray(plane, x, y)
        except RuntimeError as error:
            raise self._write_error(error) from None

    @property
    def has_mask(self) -> bool:
        """True when invalid pixels go into a mask band (some band has no nodata value)."""
        return self._mask is not None

    def read(self, x: int, y: int, width: int, height: int) -> np.ndarray:
        """[N, height, width] of what has been written so far, from output pixel (x, y)."""
        try:
            self.dataset.FlushCache()
            return self.dataset.ReadAsArray(x, y, width, height).reshape(len(self._bands), height, width)
        except RuntimeError as error:
            raise self._write_error(error) from None

    def add_metadata(self, items: dict[str, str]) -> None:
        """Add items to the file's GDAL metadata (e.g. figures known only once every block is written)."""
        try:
            self.dataset.SetMetadata({**self.dataset.GetMetadata(), **items})
        except RuntimeError as error:
            raise self._write_error(error) from None

    def commit(self, overwrite: bool) -> None:
        """Flush and close the partial file, then move it to the target name.

        Without `overwrite` the target is created atomically and only if it does not
        exist, so a file that appeared during the run is never replaced.
        """
        try:
            self.dataset.FlushCache()
        except RuntimeError as error:
            raise self._write_error(error) from None
        self._bands, self._mask = [], None
        closing_error = _drop_dataset(self)
        if closing_error is not None:
            raise self._write_error(closing_error)
        try:
            if overwrite:
                os.replace(self.temp_path, self.path)
            else:
                _create_from(self.temp_path, self.path)
        except FileExistsError:
            raise BadInput(f"output {self.path} appeared during the run; pass --overwrite (or overwrite=true) "
                           "or choose another path") from None
        except OSError as error:
            raise self._write_error(error) from None

    def abort(self) -> None:
        """Close and delete the partial file and every sidecar GDAL made for it."""
        self._bands, self._mask = [], None
        if getattr(self, "dataset", None) is not None:
            _drop_dataset(self)
        remove_file(self.temp_path)

    def _write_error(self, error: BaseException) -> BadInput:
        full = isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
        detail = error.strerror if isinstance(error, OSError) and error.strerror else _first_line(error)
        why = "the disk is full" if full else "the disk may be full or the folder not writable"
        return BadInput(f"could not write output {self.path} in {self.folder} ({detail}); {why}: free some space "
                        "or choose another folder")

    def __enter__(self) -> "OutputRaster":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self.abort()


def check_output_path(output: str, input_path: str, overwrite: bool) -> None:
    """Refuse outputs that would clobber the input, an existing file or folder, or land in an unwritable folder."""
    target = Path(output)
    if output.startswith("/vsi"):
        raise BadInput(f"output {output} is a GDAL virtual path; give a GeoTIFF file path on disk")
    if target.is_dir():
        raise BadInput(f"output {output} is a folder; give a file path ending in .tif, e.g. "
                       f"{target / 'result.tif'}")
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


def remove_stale_partials(target: str) -> list[str]:
    """Delete partial files (and their sidecars) of `target` left by processes that no longer run.

    A live process's partial file is its output in progress, so it is kept. Returns the removed paths.
    """
    removed = []
    for path in sorted(Path(target).resolve().parent.glob(partial_glob(target))):
        owner = partial_owner(path.name, target)
        if owner is None or process_alive(owner):
            continue
        try:
            path.unlink()
            removed.append(str(path))
        except OSError:  # gone already, or another user's: not ours to clean
            pass
    return removed


def process_alive(pid: int) -> bool:
    """True when process `pid` exists (also when it belongs to another user)."""
    if os.name == "nt":  # os.kill(pid, 0) would send CTRL_C_EVENT on Windows
        import ctypes

        kernel32 = ctypes.windll.kernel32  # type: ignore[attr-defined]
        handle = kernel32.OpenProcess(0x1000, False, pid)  # PROCESS_QUERY_LIMITED_INFORMATION
        if not handle:
            return kernel32.GetLastError() == 5  # ERROR_ACCESS_DENIED: it exists
        code = ctypes.c_ulong()
        try:
            return bool(kernel32.GetExitCodeProcess(handle, ctypes.byref(code))) and code.value == 259  # STILL_ACTIVE
        finally:
            kernel32.CloseHandle(handle)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def copy_rows(part: str, output: OutputRaster, y: int, strip: int = 256) -> None:
    """Copy a GeoTIFF `part` (bands, nodata and mask as `output` writes them) into `output` from row `y`,
    a strip at a time, so memory holds one strip whatever the part's size."""
    try:
        dataset = gdal.Open(part)
        bands = [dataset.GetRasterBand(i + 1) for i in range(dataset.RasterCount)]
        masked = output.has_mask
        for top in range(0, dataset.RasterYSize, strip):
            rows = min(strip, dataset.RasterYSize - top)
            values = np.stack([band.ReadAsArray(0, top, dataset.RasterXSize, rows) for band in bands])
            valid = None
            if masked:
                valid = np.broadcast_to(bands[0].GetMaskBand().ReadAsArray(0, top, dataset.RasterXSize, rows) > 0,
                                        values.shape)
            output.write(0, y + top, values, valid)
    except RuntimeError as error:
        raise BadInput(f"window part {part} could not be read ({_first_line(error)}); run again") from None
    finally:
        bands, dataset = [], None


def remove_file(path: str) -> None:
    """Delete a file and GDAL's sidecars of it, if they exist."""
    for leftover in [path] + glob.glob(glob_escape(path) + ".*"):
        try:
            os.remove(leftover)
        except FileNotFoundError:
            pass


def set_block_cache(megabytes: int) -> None:
    """Bound GDAL's block cache: its default (5 % of RAM) fills with dirty blocks of a large output."""
    gdal.SetCacheMax(int(megabytes) * 1024 * 1024)


def _create_from(temp_path: str, target: str) -> None:
    """Give `temp_path` the name `target` only if no file has that name; FileExistsError otherwise."""
    try:
        os.link(temp_path, target)
    except FileExistsError:
        raise
    except OSError:  # a file system without hard links: claim the name exclusively, then move onto it
        os.close(os.open(target, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        try:
            os.replace(temp_path, target)
        except OSError:
            os.remove(target)
            raise
        return
    os.remove(temp_path)


def _drop_dataset(owner: object) -> Optional[BaseException]:
    """Set `owner.dataset` to None and return the error GDAL raised while closing it, if any.

    GDAL closes a dataset when its last reference goes; an error then (a block that
    cannot be flushed to a full disk) would otherwise surface as an "Exception ignored
    in delete_Dataset" message instead of reaching the caller.
    """
    caught: list[BaseException] = []
    previous = sys.unraisablehook
    sys.unraisablehook = lambda report: caught.append(report.exc_value)
    try:
        owner.dataset = None  # type: ignore[attr-defined]
    finally:
        sys.unraisablehook = previous
    return caught[0] if caught else None


def _differs(values: np.ndarray, nodata: Optional[float]) -> np.ndarray:
    if nodata is None:
        return np.ones(values.shape, dtype=bool)
    if np.isnan(nodata):
        return ~np.isnan(values)
    return values != np.asarray(nodata, dtype=values.dtype if values.dtype.kind == "f" else np.float64)


def _numpy_dtype(band: gdal.Band) -> np.dtype:
    return np.dtype(gdal.GetDataTypeName(band.DataType).lower().replace("byte", "uint8"))


def _gdal_name(path: str) -> bool:
    """True for names GDAL resolves itself: /vsi paths and DRIVER:... connection strings (not C:\\ drives)."""
    prefix, colon, _ = path.partition(":")
    return path.startswith("/vsi") or (bool(colon) and len(prefix) > 1 and prefix.replace("_", "").isalnum())


def _fmt(extent: tuple[float, ...]) -> str:
    return "(" + ", ".join(f"{v:.6g}" for v in extent) + ")"


def _first_line(error: BaseException) -> str:
    """The error's first line. Its traceback is dropped: the failing GDAL call's frame in it holds the
    dataset, which would then close (and fail again, as "Exception ignored") only when the error is collected."""
    error.__traceback__ = None
    return str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
