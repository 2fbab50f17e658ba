"""Crop datasets and evaluation tiles over real GeoTIFFs: ranges, reproducibility, nodata/cloud skipping, mixing."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from rasters import smooth_image, write_raster
from training.data.scene_split import Block, whole_scene
from training.data.crops import (CropDataset, SceneRef, dataset_options, evaluation_tiles, scenes_from_folder,
                           scenes_from_manifest)
from training.data.realesrgan_degradation import bicubic_downsample

torch.set_num_threads(1)


def _scene(tmp_path: Path, name: str, size: int = 96, sensor: str = "s2", nodata_rows: int = 0,
           bright_cols: int = 0, bands: int = 3) -> SceneRef:
    values = (smooth_image(bands, size, size, seed=len(name)) * 5000 + 100).astype(np.uint16)
    values[:, :nodata_rows, :] = 0
    if bright_cols:
        values[:, :, -bright_cols:] = 20000
    path = write_raster(str(tmp_path / f"{name}.tif"), values, nodata=0)
    return SceneRef(name, Path(path), sensor, nodata=0, blocks=whole_scene(size, size, "train"))


def test_items_are_hr_and_lr_tensors_in_unit_range(tmp_path):
    dataset = CropDataset([_scene(tmp_path, "a")], crop=32, scale=4, length=4)
    item = dataset[0]
    assert item["hr"].shape == (3, 32, 32) and item["lr"].shape == (3, 8, 8)
    assert item["hr"].dtype == torch.float32
    assert 0.0 <= float(item["hr"].min()) and float(item["hr"].max()) <= 1.0
    assert dataset.normalisation_spec == "percentile:2,98"


def test_same_seed_and_index_give_the_same_item_and_other_indices_differ(tmp_path):
    scenes = [_scene(tmp_path, "a")]
    first = CropDataset(scenes, crop=32, length=8, seed=3, degraded_fraction=0.5)
    second = CropDataset(scenes, crop=32, length=8, seed=3, degraded_fraction=0.5)
    for index in (0, 5):
        torch.testing.assert_close(first[index]["hr"], second[index]["hr"], rtol=0, atol=0)
        torch.testing.assert_close(first[index]["lr"], second[index]["lr"], rtol=0, atol=0)
    assert not torch.equal(first[0]["hr"], first[1]["hr"])


def test_clean_lr_is_the_bicubic_downsampling_of_the_hr_crop(tmp_path):
    item = CropDataset([_scene(tmp_path, "a")], crop=32, scale=4, length=2, degraded_fraction=0.0)[1]
    expected = bicubic_downsample(item["hr"][None], 4).clamp(0, 1)[0]
    torch.testing.assert_close(item["lr"], expected)
    assert not item["degraded"]


def test_degraded_fraction_one_degrades_every_item(tmp_path):
    dataset = CropDataset([_scene(tmp_path, "a")], crop=32, scale=4, length=4, degraded_fraction=1.0)
    items = [dataset[i] for i in range(4)]
    assert all(item["degraded"] for item in items)
    clean = bicubic_downsample(items[0]["hr"][None], 4).clamp(0, 1)[0]
    assert not torch.allclose(items[0]["lr"], clean, atol=1e-3)


def test_crops_avoid_the_nodata_collar_and_cloud_bright_columns(tmp_path):
    scene = _scene(tmp_path, "collar", size=128, nodata_rows=48, bright_cols=48)
    dataset = CropDataset([scene], crop=32, length=20, augment=False)
    for index in range(20):
        item = dataset[index]
        assert item["y"] >= 48, "crop overlaps the nodata rows"
        assert item["x"] + 32 <= 128 - 48 + int(0.1 * 32), "crop is mostly in the bright columns"


def test_crops_stay_inside_their_role_blocks(tmp_path):
    scene = _scene(tmp_path, "blocks", size=128)
    scene = SceneRef(scene.name, scene.path, scene.sensor, nodata=0,
                     blocks={"train": [Block(0, 0, 64, 128)], "validation": [Block(96, 0, 32, 128)], "test": []})
    for role, (low, high) in (("train", (0, 64)), ("validation", (96, 128))):
        dataset = CropDataset([scene], crop=32, length=10, role=role)
        for index in range(10):
            x = dataset[index]["x"]
            assert low <= x and x + 32 <= high


def test_sensors_are_mixed_equally_whatever_their_area(tmp_path):
    scenes = [_scene(tmp_path, "big", size=256, sensor="landsat"), _scene(tmp_path, "small", size=40, sensor="neon")]
    dataset = CropDataset(scenes, crop=32, length=200, augment=False)
    counts = Counter(dataset[i]["sensor"] for i in range(200))
    assert 70 <= counts["neon"] <= 130


def test_band_mapping_picks_the_requested_bands(tmp_path):
    values = np.stack([np.full((64, 64), v, np.uint8) for v in (10, 20, 30, 40)])
    values[:, ::2, ::2] = 0  # some structure so each band has a distinct 2-98 stretch
    folder = tmp_path / "aerial"
    folder.mkdir()
    write_raster(str(folder / "four.tif"), values)
    scenes = scenes_from_folder(folder, bands=[4, 1, 2])
    assert scenes[0].bands == (4, 1, 2) and scenes[0].sensor == "aerial"
    dataset = CropDataset(scenes, crop=32, length=1, spec="fixed:0,255", augment=False)
    hr = dataset[0]["hr"]
    assert [float(hr[c].max()) * 255 for c in range(3)] == pytest.approx([40, 10, 20])


def test_evaluation_tiles_are_deterministic_disjoint_and_skip_nodata(tmp_path):
    scene = _scene(tmp_path, "eval", size=128, nodata_rows=40)
    scene = SceneRef(scene.name, scene.path, scene.sensor, nodata=0, blocks=whole_scene(128, 128, "test"))
    tiles = list(evaluation_tiles([scene], role="test", tile=32))
    again = list(evaluation_tiles([scene], role="test", tile=32))
    positions = [(t.x, t.y) for t in tiles]
    assert positions == [(t.x, t.y) for t in again]
    assert all(np.array_equal(a.hr, b.hr) for a, b in zip(tiles, again))
    assert len(set(positions)) == len(positions) == 4 * 2  # rows 64 and 96 only: rows 0-39 hold nodata
    assert all(t.hr.shape == (3, 32, 32) for t in tiles)
    assert list(evaluation_tiles([scene], role="validation", tile=32)) == []


def test_manifest_scenes_resolve_paths_beside_the_manifest(tmp_path):
    scene = _scene(tmp_path, "m")
    manifest = tmp_path / "manifest.json"
    manifest.write_text('{"scenes": [{"name": "m", "file": "m.tif", "sensor": "s2", "nodata": 0, '
                        '"blocks": {"train": [[0, 0, 96, 96]], "validation": [], "test": []}}]}')
    loaded = scenes_from_manifest(manifest)
    assert loaded[0].path == scene.path and loaded[0].blocks["train"] == [Block(0, 0, 96, 96)]


def test_worker_processes_give_the_same_items_as_the_main_process(tmp_path):
    dataset = CropDataset([_scene(tmp_path, "w")], crop=32, length=4, seed=1)
    dataset[0]  # opens the file here: the open dataset must not be sent to the worker
    loader = torch.utils.data.DataLoader(dataset, batch_size=2, num_workers=1)
    batches = list(loader)
    expected = torch.stack([dataset[i]["hr"] for i in range(4)])
    torch.testing.assert_close(torch.cat([b["hr"] for b in batches]), expected, rtol=0, atol=0)
    assert batches[0]["sensor"] == ["s2", "s2"]


def _single_band(tmp_path: Path, name: str, sensor: str = "s2") -> SceneRef:
    values = (smooth_image(1, 96, 96, seed=7) * 3000 + 50).astype(np.uint16)
    path = write_raster(str(tmp_path / f"{name}.tif"), values, nodata=0)
    return SceneRef(name, Path(path), sensor, (1, 1, 1), nodata=0, blocks=whole_scene(96, 96, "train"))


def test_excluded_sensor_families_never_appear_and_an_unknown_family_is_an_error(tmp_path):
    scenes = [_scene(tmp_path, "a", sensor="s2"), _scene(tmp_path, "b", sensor="neon")]
    dataset = CropDataset(scenes, crop=32, length=40, exclude_sensors=["neon"])
    assert {dataset[i]["sensor"] for i in range(40)} == {"s2"}
    with pytest.raises(ValueError, match="nenon"):
        CropDataset(scenes, crop=32, length=4, exclude_sensors=["nenon"])


def test_single_band_items_are_one_band_replicated_to_three_channels(tmp_path):
    dataset = CropDataset([_scene(tmp_path, "rgb")], crop=32, length=60, band_scenes=[_single_band(tmp_path, "nir")],
                          single_band_fraction=0.5)
    items = [dataset[i] for i in range(60)]
    single = [item for item in items if item["scene"] == "nir"]
    assert 10 < len(single) < 50
    for item in single:
        assert torch.equal(item["hr"][0], item["hr"][1]) and torch.equal(item["hr"][0], item["hr"][2])
        assert torch.equal(item["lr"][0], item["lr"][2])


def test_the_default_options_draw_the_same_items_as_before_they_existed(tmp_path):
    scenes = [_scene(tmp_path, "a"), _scene(tmp_path, "b", sensor="l8")]
    plain = CropDataset(scenes, crop=32, length=8, seed=4, degraded_fraction=0.5)
    options = CropDataset(scenes, crop=32, length=8, seed=4, degraded_fraction=0.5, **dataset_options({}))
    for i in range(8):
        assert torch.equal(plain[i]["lr"], options[i]["lr"]) and plain[i]["scene"] == options[i]["scene"]
    assert {plain[i]["lr_kind"] for i in range(8)} <= {"clean", "realesrgan"}


@pytest.mark.parametrize("kind, expected", [("sensor", {"sensor"}), ("mix", {"sensor", "realesrgan"})])
def test_the_degradation_option_picks_the_chain_of_degraded_items(tmp_path, kind, expected):
    dataset = CropDataset([_scene(tmp_path, "a")], crop=32, length=16, degraded_fraction=1.0, degradation_kind=kind)
    items = [dataset[i] for i in range(16)]
    assert {item["lr_kind"] for item in items} == expected
    assert all(item["lr"].shape == (3, 8, 8) for item in items)
    assert torch.equal(dataset[3]["lr"], dataset[3]["lr"])


def test_config_options_are_read_and_single_bands_need_a_manifest(tmp_path):
    band = _single_band(tmp_path, "b8")
    manifest = tmp_path / "manifest.json"
    manifest.write_text('{"scenes": [], "bands": [{"name": "b8", "file": "b8.tif", "sensor": "s2", "nodata": 0, '
                        '"blocks": {"train": [[0, 0, 96, 96]], "validation": [], "test": []}}]}')
    options = dataset_options({"exclude_sensors": ["neon"], "single_band_fraction": 0.25, "degradation": "mix"},
                              manifest)
    assert options["exclude_sensors"] == ("neon",) and options["degradation_kind"] == "mix"
    assert [(s.path, s.bands) for s in options["band_scenes"]] == [(band.path, (1, 1, 1))]
    with pytest.raises(ValueError, match="single_band_fraction needs data.manifest"):
        dataset_options({"single_band_fraction": 0.25})
    with pytest.raises(ValueError, match="unknown degradation"):
        CropDataset([_scene(tmp_path, "a")], crop=32, length=2, degradation_kind="jpeg")
