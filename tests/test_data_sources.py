"""Archive -> scene -> manifest, on small archives built here (no network): bands, georeference, terms, blocks."""

from __future__ import annotations

import json
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
from osgeo import gdal

from rasters import read_raster, smooth_image, write_raster
from training.data.scene_split import Block, check_separation
from training.data.band_files import BandFamily, Grid, PairSource, PairWindows, map_blocks, pair_windows
from training.data.sources import MANIFEST_NAME, Package, SceneSource, prepare

SATELLITE = Package("fakesat", "1.0", sdist=True)
AERIAL = Package("fakeaerial", "2.0", sdist=False)
SIZE = 200


def _band_files(tmp_path: Path) -> list[Path]:
    values = (smooth_image(3, SIZE, SIZE) * 10000 + 1).astype(np.uint16)
    paths = []
    for index, name in enumerate(("red", "green", "blue")):
        paths.append(Path(write_raster(str(tmp_path / f"{name}.tif"), values[index:index + 1])))
    return paths


def _png_bytes() -> bytes:
    values = (smooth_image(3, SIZE, SIZE, seed=5) * 255).astype(np.uint8)
    memory = gdal.GetDriverByName("MEM").Create("", SIZE, SIZE, 3, gdal.GDT_Byte)
    for index in range(3):
        memory.GetRasterBand(index + 1).WriteArray(values[index])
    gdal.GetDriverByName("PNG").CreateCopy("/vsimem/aerial.png", memory)
    handle = gdal.VSIFOpenL("/vsimem/aerial.png", "rb")
    gdal.VSIFSeekL(handle, 0, 2)
    size = gdal.VSIFTellL(handle)
    gdal.VSIFSeekL(handle, 0, 0)
    data = gdal.VSIFReadL(1, size, handle)
    gdal.VSIFCloseL(handle)
    gdal.Unlink("/vsimem/aerial.png")
    return bytes(data)


@pytest.fixture
def archives(tmp_path) -> Path:
    """A cache holding an sdist with three single-band GeoTIFFs and a wheel with an RGB PNG."""
    cache = tmp_path / "cache"
    cache.mkdir()
    with tarfile.open(cache / "fakesat-1.0.tar.gz", "w:gz") as tar:
        for path in _band_files(tmp_path):
            tar.add(path, arcname=f"fakesat-1.0/fakesat/data/{path.name}")
    with zipfile.ZipFile(cache / "fakeaerial-2.0-py3-none-any.whl", "w") as wheel:
        wheel.writestr("fakeaerial/data/plot.png", _png_bytes())
        wheel.writestr("fakeaerial/__init__.py", "")
    return cache


def _sources() -> list[SceneSource]:
    members = tuple((f"fakesat-1.0/fakesat/data/{name}.tif", 1) for name in ("red", "green", "blue"))
    return [
        SceneSource("sat_scene", "satellite", SATELLITE, members, licence="CC0-1.0",
                    attribution="Contains modified test data", nodata=0),
        SceneSource("aerial_plot", "aerial", AERIAL, tuple(("fakeaerial/data/plot.png", b) for b in (1, 2, 3)),
                    licence="CC-BY-4.0", attribution="Test aerial imagery", whole_role="validation"),
    ]


def test_bands_from_three_members_are_stacked_with_their_georeference(archives, tmp_path):
    out = tmp_path / "data"
    prepare(out, _sources(), crop=16, cache=archives, niqe=None)
    values, geotransform, wkt, nodata, _ = read_raster(str(out / "scenes" / "sat_scene.tif"))
    expected = [read_raster(str(tmp_path / f"{name}.tif")) for name in ("red", "green", "blue")]
    assert values.shape == (3, SIZE, SIZE) and values.dtype == np.uint16
    for index, (band, source_geotransform, source_wkt, _, _) in enumerate(expected):
        np.testing.assert_array_equal(values[index], band[0])
    assert geotransform == expected[0][1] and wkt == expected[0][2]
    assert nodata == 0


def test_rgb_image_from_a_wheel_becomes_an_unreferenced_scene(archives, tmp_path):
    out = tmp_path / "data"
    prepare(out, _sources(), crop=16, cache=archives, niqe=None)
    ds = gdal.Open(str(out / "scenes" / "aerial_plot.tif"))
    assert (ds.RasterCount, ds.RasterXSize, ds.RasterYSize) == (3, SIZE, SIZE)
    assert ds.GetProjection() == "" and ds.GetRasterBand(1).DataType == gdal.GDT_Byte
    ds = None


def test_manifest_lists_source_terms_and_disjoint_blocks(archives, tmp_path):
    out = tmp_path / "data"
    prepare(out, _sources(), crop=16, cache=archives, niqe=None)
    manifest = json.loads((out / MANIFEST_NAME).read_text())
    sat, aerial = manifest["scenes"]
    assert sat["package"] == "fakesat" and sat["version"] == "1.0" and sat["archive"] == "fakesat-1.0.tar.gz"
    assert sat["members"][0] == {"path": "fakesat-1.0/fakesat/data/red.tif", "band": 1}
    assert (sat["licence"], sat["attribution"], sat["sensor"]) == ("CC0-1.0", "Contains modified test data",
                                                                   "satellite")
    blocks = {role: [Block(*b) for b in items] for role, items in sat["blocks"].items()}
    assert all(blocks[role] for role in ("train", "validation", "test"))
    check_separation(blocks, manifest["gap"])
    assert aerial["blocks"] == {"train": [], "validation": [[0, 0, SIZE, SIZE]], "test": []}


def test_prepare_again_keeps_the_written_scenes(archives, tmp_path):
    out = tmp_path / "data"
    first = prepare(out, _sources(), crop=16, cache=archives, niqe=None)
    stamp = (out / "scenes" / "sat_scene.tif").stat().st_mtime_ns
    assert prepare(out, _sources(), crop=16, cache=archives, niqe=None) == first
    assert (out / "scenes" / "sat_scene.tif").stat().st_mtime_ns == stamp


def test_a_member_missing_from_the_archive_is_an_error_naming_it(archives, tmp_path):
    source = SceneSource("broken", "satellite", SATELLITE, (("fakesat-1.0/fakesat/data/nir.tif", 1),) * 3,
                         licence="CC0-1.0", attribution="x")
    with pytest.raises(KeyError, match="nir.tif"):
        prepare(tmp_path / "data", [source], crop=16, cache=archives, niqe=None)
    assert not (tmp_path / "data" / "scenes" / "broken.tif").exists()


def _grid(x0: float, y0: float, pixel: float, width: int, height: int) -> Grid:
    return Grid((x0, pixel, 0.0, y0, 0.0, -pixel), width, height)


def test_a_fine_grid_one_pixel_in_pairs_from_the_next_coarse_pixel():
    # Sentinel-2: the 20 m grid starts one 10 m pixel west of the 10 m grid.
    windows = pair_windows(_grid(1000.0, 5000.0, 20.0, 50, 40), _grid(1010.0, 5000.0, 10.0, 99, 80))
    assert windows == PairWindows(lr=(1, 0, 49, 40), hr=(1, 0, 98, 80), hr_offset=0.0)


def test_a_fine_grid_half_a_pixel_off_pairs_with_an_offset_and_one_pixel_less():
    # Landsat 8: the 15 m grid is offset by half a 15 m pixel north-west of the 30 m grid.
    windows = pair_windows(_grid(1000.0, 5000.0, 30.0, 20, 10), _grid(992.5, 5007.5, 15.0, 40, 20))
    assert windows == PairWindows(lr=(0, 0, 20, 10), hr=(1, 1, 39, 19), hr_offset=0.5)
    with pytest.raises(ValueError, match="offset by -0.333"):
        pair_windows(_grid(1000.0, 5000.0, 30.0, 20, 10), _grid(995.0, 5000.0, 15.0, 40, 20))


def test_mapped_train_blocks_shrink_and_held_out_blocks_grow_to_whole_pixels():
    source = _grid(0.0, 1000.0, 10.0, 100, 100)
    target = _grid(10.0, 1000.0, 20.0, 49, 50)
    blocks = {"train": [Block(0, 0, 45, 100)], "validation": [], "test": [Block(55, 0, 45, 100)]}
    mapped = map_blocks(blocks, source, target)
    assert mapped["train"] == [Block(0, 0, 22, 50)]  # x 0..450 m -> 20 m pixels from x 10: 0..22 whole inside
    assert mapped["test"] == [Block(27, 0, 22, 50)]  # x 550..1000 m -> pixels 27 (x 550) to 49 (clipped)


def _band_archive(cache: Path, tmp_path: Path) -> None:
    """fakesat-1.0 gains a 10 m fine band and a 20 m coarse band over the RGB scene's ground."""
    fine = (smooth_image(1, SIZE, SIZE, seed=9) * 10000 + 1).astype(np.uint16)
    coarse = fine.reshape(1, SIZE // 2, 2, SIZE // 2, 2).mean(axis=(2, 4)).astype(np.uint16)
    write_raster(str(tmp_path / "fine.tif"), fine)
    write_raster(str(tmp_path / "coarse.tif"), coarse, pixel=20.0)
    with tarfile.open(cache / "fakesat-1.0.tar.gz", "w:gz") as tar:
        for path in [*_band_files(tmp_path), tmp_path / "fine.tif", tmp_path / "coarse.tif"]:
            tar.add(path, arcname=f"fakesat-1.0/fakesat/data/{path.name}")


def test_a_band_family_writes_single_band_files_and_a_pair_with_the_scene_s_held_out_blocks(archives, tmp_path):
    _band_archive(archives, tmp_path)
    family = BandFamily("sat", "satellite", SATELLITE, "fakesat-1.0/fakesat/data/{}.tif", ("red", "fine", "coarse"),
                        anchor_scene="sat_scene", licence="CC0-1.0", attribution="Contains modified test data",
                        nodata=0, pairs=(PairSource("sat_coarse_fine", ("coarse",), "fine"),))
    out = tmp_path / "data"
    manifest = prepare(out, _sources(), crop=16, cache=archives, niqe=None, families=[family])
    scene = manifest["scenes"][0]
    bands = {entry["band"]: entry for entry in manifest["bands"]}
    assert set(bands) == {"red", "fine", "coarse"} and bands["fine"]["sensor"] == "satellite"
    assert bands["fine"]["blocks"] == scene["blocks"]  # same grid as the scene
    assert read_raster(str(out / bands["coarse"]["file"]))[0].shape == (1, SIZE // 2, SIZE // 2)
    (pair,) = manifest["pairs"]
    lr, hr = read_raster(str(out / pair["lr"]["file"]))[0], read_raster(str(out / pair["hr"]["file"]))[0]
    assert lr.shape == (1, SIZE // 2, SIZE // 2) and hr.shape == (1, SIZE, SIZE) and pair["hr_offset"] == 0.0
    for role in ("validation", "test"):
        assert pair["blocks"][role] == [[x // 2, y // 2, -(-(x + w) // 2) - x // 2, -(-(y + h) // 2) - y // 2]
                                        for x, y, w, h in scene["blocks"][role]]
    assert prepare(out, _sources()[1:], crop=16, cache=archives, niqe=None, families=[family]).get("pairs") is None
