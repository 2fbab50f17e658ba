"""The shared evaluation protocol: LR making, whole-block images, the metric set, and the report built on them."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import save_file

from slimdiffsr_qgis.contract import BadInput
from rasters import smooth_image, write_raster
from training.data.crops import CropDataset, EvaluationTile, scenes_from_folder, scenes_from_manifest
from training.data.realesrgan_degradation import bicubic_downsample
from training.evaluation import report
from training.evaluation.dists import DISTS
from training.evaluation.images import held_out_images
from training.evaluation.lr import CLEAN, DEGRADED, EVALUATION_LR_KINDS, SENSOR_LR, image_seed, make_lr
from training.evaluation.scoring import MetricSet, Scores, score_images
from training.evaluation.timing import seconds_per_output
from training.losses.perceptual import LPIPS
from training.runtime.config import typed_section
from training_helpers import TINY_CONFIG, tiny_config

torch.set_num_threads(1)


def hr_image(height: int = 64, width: int = 64, seed: int = 0) -> np.ndarray:
    return smooth_image(3, height, width, seed=seed).astype(np.float32)


def test_clean_lr_is_the_reduction_training_pairs_are_made_with(tmp_path):
    write_raster(str(tmp_path / "scene.tif"), (smooth_image(3, 96, 96) * 10000).astype(np.uint16))
    dataset = CropDataset(scenes_from_folder(tmp_path), crop=32, scale=4, length=2, augment=False)
    for item in (dataset[0], dataset[1]):
        np.testing.assert_array_equal(make_lr(item["hr"].numpy(), 4, CLEAN, 7), item["lr"].numpy())
    hr = hr_image()
    expected = bicubic_downsample(torch.from_numpy(hr)[None], 4).clamp(0, 1)[0].numpy()
    np.testing.assert_array_equal(make_lr(hr, 4, CLEAN, 1), expected)


@pytest.mark.parametrize("kind", [DEGRADED, SENSOR_LR])
def test_degraded_lr_is_fixed_by_its_seed_and_differs_from_clean_and_between_seeds(kind):
    hr = hr_image()
    first = make_lr(hr, 4, kind, image_seed(0))
    np.testing.assert_array_equal(first, make_lr(hr, 4, kind, image_seed(0)))
    assert first.shape == (3, 16, 16)
    assert np.abs(first - make_lr(hr, 4, CLEAN, image_seed(0))).mean() > 1e-3
    assert np.abs(first - make_lr(hr, 4, kind, image_seed(1))).mean() > 1e-4


def test_an_unknown_lr_kind_is_refused():
    with pytest.raises(ValueError, match="unknown LR kind 'realesrgan'"):
        make_lr(hr_image(), 4, "realesrgan", 0)


def test_every_method_sees_the_lr_seeded_by_the_image_index():
    images = [EvaluationTile("scene", "s2", 0, 0, hr_image(seed=s)) for s in range(2)]
    seen: dict[str, list[np.ndarray]] = {"a": [], "b": []}

    def recording(name):
        return lambda lr: seen[name].append(lr) or np.kron(lr, np.ones((1, 4, 4), np.float32))

    scores = score_images(images, {"a": recording("a"), "b": recording("b")}, 4, [DEGRADED], MetricSet())
    for index, image in enumerate(images):
        expected = make_lr(image.hr, 4, DEGRADED, image_seed(index))
        np.testing.assert_array_equal(seen["a"][index], expected)
        np.testing.assert_array_equal(seen["b"][index], expected)
    assert set(scores) == {(DEGRADED, "a", "s2"), (DEGRADED, "b", "s2")}
    assert len(scores[(DEGRADED, "a", "s2")].psnr) == 2


def block_manifest(tmp_path: Path) -> Path:
    """One scene with three test blocks: 130x101 and 98x100 px clean, and a 60 px one holding nodata."""
    values = (smooth_image(3, 120, 400) * 4000 + 100).astype(np.uint16)
    values[:, 5:8, 330:333] = 0
    write_raster(str(tmp_path / "scene.tif"), values, nodata=0)
    manifest = tmp_path / "manifest.json"
    blocks = {"train": [], "validation": [], "test": [[0, 0, 130, 101], [150, 0, 98, 100], [300, 0, 60, 60]]}
    manifest.write_text(json.dumps({"scenes": [{"name": "scene", "file": "scene.tif", "sensor": "s2", "nodata": 0,
                                                "blocks": blocks}]}))
    return manifest


def test_whole_mode_scores_each_clean_block_whole_cropped_to_the_scale(tmp_path):
    scenes = scenes_from_manifest(block_manifest(tmp_path))
    whole = list(held_out_images(scenes, "test", 4, tile=48, whole=True))
    assert [(image.x, image.hr.shape) for image in whole] == [(0, (3, 100, 128)), (150, (3, 100, 96))]
    tiles = list(held_out_images(scenes, "test", 4, tile=48, whole=False))
    assert len(tiles) == 2 * 2 + 2 * 2 and all(t.hr.shape == (3, 48, 48) for t in tiles)
    outputs = []
    upscale = lambda lr: outputs.append(lr.shape) or np.kron(lr, np.ones((1, 4, 4), np.float32))
    scores = score_images(whole, {"nearest": upscale}, 4, [CLEAN], MetricSet())
    assert outputs == [(3, 25, 32), (3, 25, 24)]
    assert len(scores[(CLEAN, "nearest", "s2")].psnr) == 2


def tiny_metric_weights(tmp_path: Path) -> tuple[Path, Path]:
    """LPIPS and DISTS weights files with random VGG16 features: a real file of each format, not a real metric."""
    torch.manual_seed(0)
    lpips = LPIPS()
    for k in range(5):  # LPIPS weighs channels by non-negative weights
        torch.nn.init.uniform_(getattr(lpips, f"lin{k}").model[1].weight, 0.1, 1.0)
    lpips_file = tmp_path / "lpips.safetensors"
    save_file({k: v.contiguous() for k, v in lpips.state_dict().items()}, str(lpips_file))
    dists = DISTS()
    torch.nn.init.uniform_(dists.alpha, 0.1, 1.0)
    torch.nn.init.uniform_(dists.beta, 0.1, 1.0)
    dists_file = tmp_path / "dists.safetensors"
    save_file({k: v.contiguous() for k, v in dists.state_dict().items()}, str(dists_file))
    return lpips_file, dists_file


def test_lpips_and_dists_are_scored_only_when_their_weights_are_given(tmp_path):
    lpips_file, dists_file = tiny_metric_weights(tmp_path)
    hr = torch.from_numpy(hr_image(32, 32))
    blurred = torch.nn.functional.avg_pool2d(hr[None], 3, 1, 1)[0]
    without, with_both = Scores(), Scores()
    without.add(blurred, hr, 4, MetricSet())
    with_both.add(blurred, hr, 4, MetricSet.from_files(lpips_weights=str(lpips_file), dists_weights=str(dists_file)))
    assert without.lpips == [] and without.dists == [] and without.features == []
    assert with_both.lpips[0] > 0 and with_both.dists[0] > 0
    assert with_both.psnr == without.psnr and with_both.ssim == without.ssim


def scene_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "scenes"
    folder.mkdir()
    write_raster(str(folder / "scene.tif"), (smooth_image(3, 96, 96) * 10000).astype(np.uint16))
    return folder


def table_rows(path: Path) -> list[list[str]]:
    lines = path.read_text().splitlines()
    return [[cell.strip() for cell in line.split("|")[1:-1]] for line in lines[4:] if line.startswith("| ")]


def test_report_fills_the_lpips_and_dists_columns_from_the_config_and_names_its_protocol(tmp_path):
    lpips_file, dists_file = tiny_metric_weights(tmp_path)
    config = tiny_config(tmp_path / "run", f"data.folder={scene_folder(tmp_path)}", "evaluate.crop=32",
                         "evaluate.limit=2", f"evaluate.lpips_weights={lpips_file}",
                         f"evaluate.dists_weights={dists_file}", "evaluate.lr=degraded")
    path = report.run(config, ["bicubic"])
    caption = path.read_text().splitlines()[0]
    assert "2 test tiles of 32 px" in caption and "Real-ESRGAN" in caption
    (row,) = table_rows(path)
    name, psnr, ssim, niqe, lpips, dists = row[:6]
    assert name == "bicubic (baseline)" and niqe == "n/a" and float(lpips) > 0 and float(dists) > 0


def test_report_whole_mode_counts_blocks_and_the_command_line_overrides_the_config(tmp_path):
    config = tiny_config(tmp_path / "run", f"data.folder={scene_folder(tmp_path)}", "evaluate.limit=5")
    tiled = report.run(config, ["bicubic"], tmp_path / "tiled.md")
    whole = report.run(config, ["bicubic"], tmp_path / "whole.md", whole=True, lr="sensor")
    assert "1 test tiles of 64 px" in tiled.read_text().splitlines()[0]  # a 96 px scene holds one 64 px tile
    assert "1 whole test blocks" in whole.read_text().splitlines()[0] and "sensor" in whole.read_text()
    assert table_rows(tiled)[0][1] != table_rows(whole)[0][1]


@pytest.mark.parametrize("override, message", [("evaluate.seconds_size=128", "seconds_size"),
                                               ("evaluate.lr=blurred", "evaluate.lr 'blurred'"),
                                               ("evaluate.whole=maybe", "evaluate.whole must be true or false"),
                                               ("evaluate.crop=0", "evaluate.crop must be a positive")])
def test_an_unknown_or_invalid_evaluate_key_is_refused(tmp_path, override, message):
    config = tiny_config(tmp_path, override)
    with pytest.raises(BadInput, match=message):
        report.run(config, ["bicubic"])


@pytest.mark.parametrize("config_file", sorted(TINY_CONFIG.parent.glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_config_has_a_readable_evaluate_section(config_file):
    settings = typed_section(report.EvaluateSettings, yaml.safe_load(config_file.read_text()), "evaluate")
    assert settings.lr in EVALUATION_LR_KINDS


def test_seconds_per_output_times_a_real_forward_pass():
    model = torch.nn.Upsample(scale_factor=4, mode="bicubic")
    assert seconds_per_output(model, 4, torch.device("cpu"), repeats=2) > 0
