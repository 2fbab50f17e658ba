"""Single-band files and cross-resolution pairs of a multispectral archive, with blocks mapped from one split.

Two uses of the same bands. Training for remote sensing: every band of a
Sentinel-2 or Landsat 8 product as a single-band file, which the crop sampler
reads replicated to the model's three channels, as the engine feeds every
non-RGB band. Measuring on real pairs: a sensor's coarse band(s) beside its own
band at twice the resolution over the same ground (Sentinel-2 B8A 20 m beside
B8 10 m; Landsat 8 red/green/blue 30 m beside the panchromatic B8 15 m), cut
to a common extent where the fine grid halves the coarse one.

Every file of a family gets its train / validation / test blocks by mapping
one anchor split through the georeferencing (train blocks shrunk to whole
pixels inside, held-out blocks grown to whole pixels outside), so a held-out
place is held out in every band and in the pairs alike.

Grid alignment: Sentinel-2's 20 m grid starts one 10 m pixel west of its
10 m grid, so the pair starts one 10 m pixel in. Landsat 8's 15 m grid is
offset by half a 15 m pixel from the 30 m grid (each 15 m pixel centre lies on
a 30 m pixel's centre or edge): no common whole-pixel extent exists, and the
pair records `hr_offset` 0.5: its HR pixel k is centred on the boundary
between pixels k and k+1 of the LR-aligned x2 grid, and has 2w-1 columns for
w LR columns (`benchmarks.real_pairs` averages each 2x2 of an output onto it).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
from osgeo import gdal

from training.data.archives import Package, write_geotiff
from training.data.scene_split import ROLES, Block

gdal.UseExceptions()

# A mapped coordinate this close to a whole pixel is that pixel (float error of the geotransforms).
_SNAP = 1e-6


@dataclass(frozen=True)
class PairSource:
    """A cross-resolution pair: coarse band(s) to super-resolve x2, and the family's band at twice their resolution."""

    name: str
    lr_bands: tuple[str, ...]
    hr_band: str


@dataclass(frozen=True)
class BandFamily:
    """The bands of one multispectral product in one archive, and where their blocks come from.

    member: the archive path of a band, with {} for the band name. anchor_scene:
    the 3-band scene (of `training.data.sources`) over the same ground; the
    family is prepared only with it. split_band: None maps the anchor scene's
    blocks; a band name splits that band's own grid instead (for an anchor
    scene given whole to one role, such as the cloudy Landsat 8 one).
    excluded: (band, reason) of the archive's bands left out.
    """

    name: str
    sensor: str
    package: Package
    member: str
    bands: tuple[str, ...]
    anchor_scene: str
    licence: str
    attribution: str
    nodata: Optional[int] = None
    split_band: Optional[str] = None
    pairs: tuple[PairSource, ...] = ()
    excluded: tuple[tuple[str, str], ...] = ()

    def file_name(self, band: str) -> str:
        return f"{self.name}_{band}.tif"


@dataclass(frozen=True)
class Grid:
    """A north-up raster grid: geotransform and size in pixels."""

    geotransform: tuple[float, ...]
    width: int
    height: int

    @classmethod
    def of(cls, path: Path) -> "Grid":
        ds = gdal.Open(str(path))
        grid = cls(tuple(ds.GetGeoTransform()), ds.RasterXSize, ds.RasterYSize)
        ds = None
        return grid

    def shifted(self, x: int, y: int, width: int, height: int) -> "Grid":
        """The grid of the window (x, y, width, height) of this one."""
        gt = self.geotransform
        return Grid((gt[0] + x * gt[1], gt[1], 0.0, gt[3] + y * gt[5], 0.0, gt[5]), width, height)


def map_blocks(blocks: dict[str, list[Block]], source: Grid, target: Grid) -> dict[str, list[Block]]:
    """The blocks of `source` pixels as blocks of `target` pixels, clipped to the target.

    Train blocks shrink to the whole target pixels inside them and held-out
    blocks grow to the whole pixels that touch them, so no training pixel of the
    target covers ground that is held out in the source.
    """
    mapped: dict[str, list[Block]] = {role: [] for role in ROLES}
    for role in ROLES:
        inward = role == "train"
        for block in blocks.get(role, []):
            x0, x1 = (_to_target(v, source, target, 0) for v in (block.x, block.x + block.width))
            y0, y1 = (_to_target(v, source, target, 1) for v in (block.y, block.y + block.height))
            low, high = (math.ceil, math.floor) if inward else (math.floor, math.ceil)
            left, right = max(0, low(x0)), min(target.width, high(x1))
            top, bottom = max(0, low(y0)), min(target.height, high(y1))
            if right > left and bottom > top:
                mapped[role].append(Block(left, top, right - left, bottom - top))
    return mapped


def _to_target(pixel: float, source: Grid, target: Grid, axis: int) -> float:
    origin, step = (0, 1) if axis == 0 else (3, 5)
    coordinate = source.geotransform[origin] + pixel * source.geotransform[step]
    value = (coordinate - target.geotransform[origin]) / target.geotransform[step]
    return float(round(value)) if abs(value - round(value)) < _SNAP else value


@dataclass(frozen=True)
class PairWindows:
    """Where a pair lies: the LR window of the coarse grid, the HR window of the fine grid, and the HR offset."""

    lr: tuple[int, int, int, int]
    hr: tuple[int, int, int, int]
    hr_offset: float


def pair_windows(coarse: Grid, fine: Grid) -> PairWindows:
    """The largest common extent where the fine grid is the coarse one halved (offset 0) or that halved grid
    shifted by half a fine pixel (offset 0.5); anything else is an error."""
    if not math.isclose(coarse.geotransform[1], 2 * fine.geotransform[1]) or \
            not math.isclose(coarse.geotransform[5], 2 * fine.geotransform[5]):
        raise ValueError(f"the fine grid's pixel ({fine.geotransform[1]}) is not half the coarse grid's "
                         f"({coarse.geotransform[1]})")
    axes = []
    for origin, step, coarse_size, fine_size in ((0, 1, coarse.width, fine.width), (3, 5, coarse.height, fine.height)):
        shift = (fine.geotransform[origin] - coarse.geotransform[origin]) / fine.geotransform[step]
        axes.append(_axis_window(shift, coarse_size, fine_size))
    offsets = {offset for *_, offset in axes}
    if len(offsets) != 1:
        raise ValueError("the fine grid is offset by half a pixel along one axis only")
    (lr_x, lr_w, hr_x, hr_w, offset), (lr_y, lr_h, hr_y, hr_h, _) = axes
    return PairWindows((lr_x, lr_y, lr_w, lr_h), (hr_x, hr_y, hr_w, hr_h), offset)


def _axis_window(shift: float, coarse_size: int, fine_size: int) -> tuple[int, int, int, int, float]:
    """(LR start, LR size, HR start, HR size, offset) along one axis; `shift` is the fine origin in fine pixels
    from the coarse origin."""
    whole = round(shift)
    if abs(shift - whole) < _SNAP:
        start = max(0, math.ceil(whole / 2))
        fine_start = 2 * start - whole
        size = min(coarse_size - start, (fine_size - fine_start) // 2)
        return start, size, fine_start, 2 * size, 0.0
    if abs(shift - math.floor(shift) - 0.5) < _SNAP:
        below = math.floor(shift)
        start = max(0, math.ceil(below / 2))
        fine_start = 2 * start - below
        size = min(coarse_size - start, (fine_size - fine_start + 1) // 2)
        return start, size, fine_start, 2 * size - 1, 0.5
    raise ValueError(f"the fine grid is offset by {shift:.3f} fine pixels from the coarse one; "
                     "only whole or half pixels can be paired")


def read_window(path: Path, window: tuple[int, int, int, int]) -> np.ndarray:
    """[H, W] of band 1 of `path` in the window (x, y, width, height)."""
    ds = gdal.Open(str(path))
    values = ds.GetRasterBand(1).ReadAsArray(*window)
    ds = None
    return values


def write_pair(family: BandFamily, pair: PairSource, band_paths: dict[str, Path], folder: Path,
               windows: PairWindows) -> tuple[Path, Path]:
    """Write the pair's `<name>_lr.tif` (its coarse bands) and `<name>_hr.tif` (the fine band) under `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    coarse = Grid.of(band_paths[pair.lr_bands[0]])
    fine = Grid.of(band_paths[pair.hr_band])
    projection = _projection(band_paths[pair.hr_band])
    lr_path, hr_path = folder / f"{pair.name}_lr.tif", folder / f"{pair.name}_hr.tif"
    lr = np.stack([read_window(band_paths[band], windows.lr) for band in pair.lr_bands])
    write_geotiff(lr_path, lr, coarse.shifted(*windows.lr).geotransform, projection, family.nodata)
    hr = read_window(band_paths[pair.hr_band], windows.hr)[None]
    write_geotiff(hr_path, hr, fine.shifted(*windows.hr).geotransform, projection, family.nodata)
    return lr_path, hr_path


def _projection(path: Path) -> str:
    ds = gdal.Open(str(path))
    wkt = ds.GetProjection()
    ds = None
    return wkt


def pair_entry(family: BandFamily, pair: PairSource, paths: tuple[Path, Path], root: Path, windows: PairWindows,
               blocks: dict[str, list[Block]], archive: str) -> dict:
    """The manifest entry of a written pair; blocks are in LR pixels."""
    return {
        "name": pair.name, "sensor": family.sensor, "scale": 2, "hr_offset": windows.hr_offset,
        "lr": {"file": str(paths[0].relative_to(root)), "bands": list(pair.lr_bands)},
        "hr": {"file": str(paths[1].relative_to(root)), "band": pair.hr_band},
        "lr_size": list(windows.lr[2:]), "nodata": family.nodata,
        "package": family.package.name, "version": family.package.version, "archive": archive,
        "members": [family.member.format(band) for band in (*pair.lr_bands, pair.hr_band)],
        "licence": family.licence, "attribution": family.attribution,
        "blocks": {role: [b.as_list() for b in items] for role, items in blocks.items()},
    }


def band_entry(family: BandFamily, band: str, path: Path, root: Path, blocks: dict[str, list[Block]],
               archive: str) -> dict:
    """The manifest entry of a written single-band file."""
    grid = Grid.of(path)
    ds = gdal.Open(str(path))
    dtype = gdal.GetDataTypeName(ds.GetRasterBand(1).DataType)
    ds = None
    return {
        "name": Path(family.file_name(band)).stem, "file": str(path.relative_to(root)), "sensor": family.sensor,
        "family": family.name, "band": band, "pixel_size": abs(grid.geotransform[1]),
        "size": [grid.width, grid.height], "dtype": dtype, "nodata": family.nodata,
        "package": family.package.name, "version": family.package.version, "archive": archive,
        "member": family.member.format(band), "licence": family.licence, "attribution": family.attribution,
        "blocks": {role: [b.as_list() for b in items] for role, items in blocks.items()},
    }

