"""Training crops from real cross-resolution pairs: what is learnable, the radiometric alignment, mixing with
scene crops, and the config key, on small real GeoTIFF pairs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from rasters import smooth_image, write_raster
from training.data.crops import CropDataset, SceneRef
from training.data.datasets import training_dataset
from training.data.pairs import REAL_PAIR, PairCrops, align_to_input
from training.data.realesrgan_degradation import bicubic_downsample
from training.data.scene_split import whole_scene

torch.set_num_threads(1)


def _pair(tmp_path: Path, name: str = "p", offset: float = 0.0, lr_bands: int = 1) -> dict:
    """A pair entry whose 20 m band is the 2x2 mean of its 10 m band at another gain and offset."""
    fine = smooth_image(1, 192, 192, seed=5)
    coarse = fine.reshape(1, 96, 2, 96, 2).mean(axis=(2, 4))
    write_raster(str(tmp_path / f"{name}_lr.tif"), np.repeat(coarse * 3000 + 500, lr_bands, axis=0).astype(np.uint16),
                 pixel=20.0, nodata=0)
    hr = fine[:, :191, :191] if offset else fine
    write_raster(str(tmp_path / f"{name}_hr.tif"), (hr * 6000 + 100).astype(np.uint16), nodata=0)
    return {"name": name, "sensor": "sentinel2", "scale": 2, "hr_offset": offset,
            "lr": {"file": f"{name}_lr.tif", "bands": ["a"] * lr_bands}, "hr": {"file": f"{name}_hr.tif", "band": "b"},
            "nodata": 0, "blocks": {"train": [[0, 0, 64, 96]], "validation": [[64, 0, 32, 96]], "test": []}}


def _manifest(tmp_path: Path, *pairs: dict) -> Path:
    scene = (smooth_image(3, 96, 96, seed=1) * 5000 + 100).astype(np.uint16)
    write_raster(str(tmp_path / "scene.tif"), scene, nodata=0)
    path = tmp_path / "manifest.json"
    path.write_text(json.dumps({"scenes": [{"name": "scene", "file": "scene.tif", "sensor": "sentinel2", "nodata": 0,
                                            "blocks": {"train": [[0, 0, 96, 96]]}}], "pairs": list(pairs)}))
    return path


def test_pair_items_are_the_real_lr_and_its_finer_band_in_the_lr_s_radiometry(tmp_path):
    crops = PairCrops(_manifest(tmp_path, _pair(tmp_path)), scale=2, crop=32)
    item = crops.item(np.random.default_rng(0), augmented=True)
    assert item["lr"].shape == (3, 16, 16) and item["hr"].shape == (3, 32, 32) and item["lr_kind"] == REAL_PAIR
    assert torch.equal(item["lr"][0], item["lr"][2]) and torch.equal(item["hr"][0], item["hr"][1])
    assert 0 <= item["x"] <= 64 - 16 and item["scene"] == "p" and item["sensor"] == "sentinel2"
    # the HR reduced to the LR grid is the LR, up to the 2x2 mean vs antialiased bicubic and the clipped 2-98 %
    reduced = bicubic_downsample(item["hr"][None], 2)[0, 0].ravel().numpy()
    assert np.corrcoef(reduced, item["lr"][0].ravel().numpy())[0, 1] > 0.95
    assert float(np.abs(reduced - item["lr"][0].ravel().numpy()).mean()) < 0.05


def test_the_alignment_takes_out_a_gain_and_offset_between_the_bands():
    fine = smooth_image(1, 64, 64, seed=2)[0].astype(np.float32)
    lr = bicubic_downsample(torch.from_numpy(fine)[None, None], 2)[0, 0].numpy()
    aligned = align_to_input(2.5 * fine - 0.3, lr, 2)
    assert np.allclose(aligned, fine, atol=1e-4)


def test_only_one_band_pairs_on_the_hr_grid_of_the_scale_are_learnt_from(tmp_path):
    manifest = _manifest(tmp_path, _pair(tmp_path, "offset", offset=0.5), _pair(tmp_path, "rgb", lr_bands=3))
    with pytest.raises(ValueError, match="no one-band x2 pair"):
        PairCrops(manifest, scale=2, crop=32)
    with pytest.raises(ValueError, match="no one-band x4 pair"):
        PairCrops(_manifest(tmp_path, _pair(tmp_path)), scale=4, crop=32)
    with pytest.raises(ValueError, match="no one-band x2 pair"):
        PairCrops(_manifest(tmp_path, _pair(tmp_path)), scale=2, crop=32, exclude_sensors=["sentinel2"])


def test_a_pair_fraction_mixes_pair_items_into_scene_items_reproducibly(tmp_path):
    manifest = _manifest(tmp_path, _pair(tmp_path))
    scene = SceneRef("scene", tmp_path / "scene.tif", "sentinel2", nodata=0, blocks=whole_scene(96, 96, "train"))
    pairs = PairCrops(manifest, scale=2, crop=32)
    mixed = CropDataset([scene], crop=32, scale=2, length=40, seed=7, pair_fraction=0.5, pairs=pairs)
    kinds = [mixed[i]["lr_kind"] for i in range(40)]
    assert 10 <= kinds.count(REAL_PAIR) <= 30
    again = CropDataset([scene], crop=32, scale=2, length=40, seed=7, pair_fraction=0.5, pairs=pairs)
    assert all(torch.equal(mixed[i]["hr"], again[i]["hr"]) for i in range(0, 40, 7))
    with pytest.raises(ValueError, match="pair_fraction needs pairs"):
        CropDataset([scene], crop=32, scale=2, length=4, pair_fraction=0.5)


def test_a_config_s_pair_fraction_draws_from_the_manifest_s_pairs(tmp_path):
    manifest = _manifest(tmp_path, _pair(tmp_path))
    config = {"output_dir": str(tmp_path / "run"), "scale": 2,
              "data": {"manifest": str(manifest), "crop": 32, "length": 20, "pair_fraction": 1.0}}
    dataset = training_dataset(config)
    assert {dataset[i]["lr_kind"] for i in range(5)} == {REAL_PAIR}
