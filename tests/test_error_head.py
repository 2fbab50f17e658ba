"""The error head: shapes, its weights file, its training, and the calibration metrics on hand-made arrays."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from backend.models import load
from backend.models.error_head import (MEAN, MEDIAN, MEDIAN_OF_B, STATISTIC_KEY, TRAINED_ON_KEY, ErrorHead,
                                       ErrorHeadConfig, below_median_share, calibrated_on, head_beside, head_output,
                                       head_statistic, laplace_nll, level_factor, load_head, median_loss,
                                       median_of_output, output_kind, predict_error, rescaled, save_head)
from backend.models.weights import file_sha256
from benchmarks.calibration import (Pooled, add_tile, block_means, format_table, refuse_seen_train_blocks,
                                    sparsification_areas, sparsification_curve, sparsification_gap, spearman)
from plugin_fixtures import REPO, write_tiny_shipped_like_weights
from rasters import smooth_image, write_raster
from slimdiffsr_qgis.contract import BadInput
from training.data.crops import CropSettings
from training.data.realesrgan_degradation import bicubic_downsample
from training.stages.error_head import keep_sensors, precompute, sample_batch, sharpen, train

SMALL = ErrorHeadConfig(scale=4, channels=8, dilations=(1, 2))
SHA = "a" * 64


def _pair(height: int = 12, width: int = 10, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return (rng.random((3, height, width), dtype=np.float32),
            rng.random((3, height * 4, width * 4), dtype=np.float32))


def test_predict_error_gives_one_positive_error_per_output_pixel():
    lr, sr = _pair()
    error = predict_error(ErrorHead(SMALL), lr, sr)
    assert error.shape == (48, 40) and error.dtype == np.float32
    assert (error > 0).all() and (error <= 1).all()


def test_predict_error_refuses_an_sr_that_is_not_scale_times_the_lr():
    lr, sr = _pair()
    with pytest.raises(ValueError, match=r"SR \[3, h\*4, w\*4\]"):
        predict_error(ErrorHead(SMALL), lr, sr[:, :-4])


def test_head_is_local_so_a_crop_matches_the_whole_map_away_from_its_border():
    head = ErrorHead(SMALL)
    torch.nn.init.normal_(head.out.weight, std=0.5)
    lr, sr = _pair(24, 24)
    whole = predict_error(head, lr, sr)
    margin = SMALL.receptive_radius
    part = predict_error(head, lr[:, :16, :16], sr[:, :64, :64])
    inner = slice(0, (16 - margin) * 4)
    np.testing.assert_allclose(part[inner, inner], whole[inner, inner], rtol=1e-5, atol=1e-7)


def test_saved_head_loads_with_the_same_config_outputs_and_provenance(tmp_path):
    head = ErrorHead(SMALL)
    torch.nn.init.normal_(head.out.weight, std=0.1)
    path = tmp_path / "head.safetensors"
    save_head(head, path, SHA, {TRAINED_ON_KEY: "neon"})
    loaded = load_head(path, SHA)
    lr, sr = _pair()
    assert loaded.config == SMALL
    assert loaded.meta[TRAINED_ON_KEY] == "neon" and loaded.meta["student_sha256"] == SHA
    np.testing.assert_array_equal(predict_error(loaded, lr, sr), predict_error(head, lr, sr))


def test_head_trained_for_another_student_is_refused(tmp_path):
    path = tmp_path / "head.safetensors"
    save_head(ErrorHead(SMALL), path, SHA)
    with pytest.raises(BadInput, match="trained for the student weights with sha256 aaaaaaaaaaaa"):
        load_head(path, "b" * 64)


def test_the_head_of_a_student_is_found_beside_its_weights(tmp_path):
    weights = tmp_path / "mine_x4.safetensors"
    assert head_beside(weights) is None
    save_head(ErrorHead(SMALL), tmp_path / "mine_x4.error.safetensors", SHA)
    assert head_beside(weights) == tmp_path / "mine_x4.error.safetensors"


def test_a_file_that_is_not_a_head_is_bad_input(tmp_path):
    path = tmp_path / "head.safetensors"
    path.write_bytes(b"not safetensors")
    with pytest.raises(BadInput, match="head.safetensors"):
        load_head(path)


def _crops(count: int = 6) -> dict:
    """Crops whose error is large on the left half and small on the right: something a head can learn."""
    generator = torch.Generator().manual_seed(0)
    lr = torch.rand(count, 3, 32, 32, generator=generator)
    sr = torch.nn.functional.interpolate(lr, scale_factor=4, mode="bicubic", align_corners=False)
    scale = torch.ones(1, 1, 1, 128) * 0.005
    scale[..., :64] = 0.1
    hr = sr + scale * torch.randn(sr.shape, generator=generator)
    return {"lr": lr.half(), "sr": sr.half(), "hr": hr.half(), "sensor": ["neon", "landsat8"] * (count // 2),
            "degraded": torch.zeros(count, dtype=torch.bool)}


def test_contrast_jitter_scales_a_sub_crops_contrast_and_its_error_alike_and_is_off_at_one():
    crops, indices = _crops(), torch.arange(6)
    plain = sample_batch(crops, indices, 4, 16, torch.Generator().manual_seed(3))
    unjittered = sample_batch(crops, indices, 4, 16, torch.Generator().manual_seed(3), contrast_jitter=1.0)
    jittered = sample_batch(crops, indices, 4, 16, torch.Generator().manual_seed(3), contrast_jitter=2.0)
    for a, b in zip(plain, unjittered):
        assert torch.equal(a, b)
    (lr, sr, hr), (lr_j, sr_j, hr_j) = plain, jittered
    torch.testing.assert_close(lr_j.mean(dim=(1, 2, 3)), lr.mean(dim=(1, 2, 3)), atol=1e-5, rtol=0)
    gain = (lr_j - lr_j.mean(dim=(1, 2, 3), keepdim=True)).std(dim=(1, 2, 3)) / \
        (lr - lr.mean(dim=(1, 2, 3), keepdim=True)).std(dim=(1, 2, 3))
    assert ((gain > 0.5 - 1e-4) & (gain < 2.0 + 1e-4)).all() and gain.max() / gain.min() > 1.1
    error_gain = (sr_j - hr_j).abs().mean(dim=(1, 2, 3)) / (sr - hr).abs().mean(dim=(1, 2, 3))
    torch.testing.assert_close(error_gain, gain, rtol=1e-3, atol=0)


def test_a_few_training_steps_reduce_the_laplace_nll():
    torch.set_num_threads(1)
    crops = _crops()
    lr, sr, hr = (crops[k].float() for k in ("lr", "sr", "hr"))
    before = laplace_nll(ErrorHead(SMALL)(lr, sr), sr, hr).item()
    head, steps = train(crops, SMALL, minutes=5, max_steps=40, batch=4, learning_rate=1e-2, statistic=MEAN)
    with torch.no_grad():
        after = laplace_nll(head(lr, sr), sr, hr).item()
    assert steps == 40 and after < before - 0.3


def test_training_for_the_median_puts_half_of_the_errors_below_the_prediction():
    torch.set_num_threads(1)
    crops = _crops()
    lr, sr, hr = (crops[k].float() for k in ("lr", "sr", "hr"))

    def share_below(head: ErrorHead) -> float:
        with torch.no_grad():
            return float(((sr - hr).abs() < torch.exp(head(lr, sr))).float().mean())

    assert share_below(ErrorHead(SMALL)) > 0.55
    head, steps = train(crops, SMALL, minutes=5, max_steps=150, batch=4, learning_rate=2e-2, statistic=MEDIAN)
    assert steps == 150 and share_below(head) == pytest.approx(0.5, abs=0.04)


def _fitted_constant(loss, errors: torch.Tensor, steps: int = 600) -> float:
    """The one value exp(log m) that `loss` settles on for `errors` (sr = 0, hr = errors)."""
    log_value = torch.tensor(np.log(0.05), requires_grad=True)
    optimiser = torch.optim.Adam([log_value], lr=0.02)
    for _ in range(steps):
        optimiser.zero_grad()
        loss(log_value.expand_as(errors), torch.zeros_like(errors), errors).backward()
        optimiser.step()
    return float(torch.exp(log_value.detach()))


def test_the_median_loss_settles_on_the_median_where_the_laplace_scale_misses_it_for_gaussian_errors():
    # Noise-like (Gaussian) errors, as on degraded LR: b ln 2 from the Laplace fit puts only ~42 % below it.
    errors = torch.randn(20_000, generator=torch.Generator().manual_seed(0)).abs() * 0.05
    median = _fitted_constant(median_loss, errors)
    assert median == pytest.approx(float(errors.median()), rel=0.03)
    laplace_median = _fitted_constant(laplace_nll, errors) * MEDIAN_OF_B
    assert float((errors < laplace_median).float().mean()) == pytest.approx(0.42, abs=0.02)


def test_the_output_of_a_median_head_is_its_median_and_older_heads_learnt_the_laplace_scale(tmp_path):
    head = ErrorHead(SMALL)
    assert median_of_output(head) == pytest.approx(np.log(2.0))
    save_head(head, tmp_path / "median.safetensors", SHA, {STATISTIC_KEY: MEDIAN})
    assert median_of_output(load_head(tmp_path / "median.safetensors", SHA)) == 1.0
    save_head(head, tmp_path / "mean.safetensors", SHA, {STATISTIC_KEY: MEAN})
    assert median_of_output(load_head(tmp_path / "mean.safetensors", SHA)) == pytest.approx(np.log(2.0))


def test_the_shipped_head_predicts_the_median_error_of_what_the_shipped_x4_student_writes_by_default():
    weights = REPO / "resources" / "weights" / "slimdiffsr_x4.safetensors"
    head = load_head(head_beside(weights), file_sha256(str(weights)))
    assert head_statistic(head) == MEDIAN and head_output(head) == output_kind(consistency=True)
    assert calibrated_on(head).startswith("the training blocks of landsat8, neon, sentinel2;")


@pytest.mark.parametrize("scale", [4, 2])
def test_the_shipped_heads_were_trained_with_the_recipe_make_error_head_runs(scale):
    makefile = (REPO / "Makefile").read_text().splitlines()
    recipe = next(line.split(":=", 1)[1].split() for line in makefile if line.startswith("HEAD_RECIPE :="))
    assert str(scale) in next(line.split(":=", 1)[1].split() for line in makefile if line.startswith("HEAD_SCALES :="))
    weights = REPO / "resources" / "weights" / f"slimdiffsr_x{scale}.safetensors"
    recorded = load_head(head_beside(weights), file_sha256(str(weights))).meta["command"].split()
    flags = [i for i, word in enumerate(recipe) if word.startswith("--")]
    for start, end in zip(flags, flags[1:] + [len(recipe)]):
        option = recipe[start:end]
        at = recorded.index(option[0]) if option[0] in recorded else -1
        assert recorded[at:at + len(option)] == option, f"the shipped head was not trained with {' '.join(option)}"


def test_excluded_sensors_leave_the_training_crops():
    kept = keep_sensors(_crops(), ["neon"])
    assert kept["sensor"] == ["landsat8"] * 3 and kept["lr"].shape[0] == 3


def test_train_blocks_score_only_a_head_that_never_trained_on_their_family():
    held_out = ErrorHead(SMALL)
    held_out.meta = {TRAINED_ON_KEY: "landsat8,sentinel2"}
    refuse_seen_train_blocks(held_out, ["neon"])
    for sensors in (["neon", "landsat8"], None, []):
        with pytest.raises(SystemExit, match="trained on landsat8, sentinel2"):
            refuse_seen_train_blocks(held_out, sensors)
    held_out.meta = {}
    with pytest.raises(SystemExit, match="unrecorded families"):
        refuse_seen_train_blocks(held_out, ["neon"])


def test_block_means_average_each_square_and_drop_a_partial_edge():
    values = np.arange(16, dtype=float).reshape(4, 4)
    values = np.pad(values, ((0, 1), (0, 1)))
    np.testing.assert_allclose(block_means(values, 2), [2.5, 4.5, 10.5, 12.5])


def _laplace_errors(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """The true median absolute error [64, 64] of a per-pixel Laplace scale b varying smoothly, and |errors|
    [3, 64, 64] drawn from it."""
    rng = np.random.default_rng(seed)
    b = np.exp(np.linspace(-6, -2, 64))[None, :] * np.ones((64, 1))
    return b * MEDIAN_OF_B, np.abs(rng.laplace(0.0, b[None], size=(3, 64, 64)))


def test_a_perfect_predictor_is_calibrated_ranks_blocks_and_is_close_to_the_oracle():
    b, errors = _laplace_errors()
    assert below_median_share(b, errors) == pytest.approx(0.5, abs=0.02)
    assert spearman(block_means(b), block_means(errors.mean(axis=0))) > 0.8
    head, random, oracle = sparsification_areas(b, errors.mean(axis=0))
    assert oracle < head < random and sparsification_gap(head, random, oracle) < 0.5


def test_a_random_predictor_ranks_nothing():
    b, errors = _laplace_errors()
    noise = np.random.default_rng(1).random(b.shape)
    assert abs(spearman(block_means(noise, 4), block_means(errors.mean(axis=0), 4))) < 0.2
    assert sparsification_gap(*sparsification_areas(noise, errors.mean(axis=0))) == pytest.approx(1.0, abs=0.1)


def test_a_predictor_off_by_a_factor_is_miscalibrated_but_ranks_as_well():
    b, errors = _laplace_errors()
    assert below_median_share(b / 4, errors) < 0.25 and below_median_share(4 * b, errors) > 0.8
    assert spearman(block_means(4 * b), block_means(errors.mean(axis=0))) == \
        pytest.approx(spearman(block_means(b), block_means(errors.mean(axis=0))))


def test_the_level_factor_is_what_a_predictor_off_by_a_factor_is_off_by():
    b, errors = _laplace_errors()
    factor = level_factor([b / 3], [errors])
    assert factor == pytest.approx(3.0, rel=0.05)
    assert below_median_share(factor * b / 3, errors) == pytest.approx(0.5, abs=0.005)


def test_a_rescaled_head_multiplies_every_b_and_records_the_product_of_its_factors(tmp_path):
    head = ErrorHead(SMALL)
    torch.nn.init.normal_(head.out.weight, std=0.05)
    lr, sr = _pair()
    twice = rescaled(rescaled(head, 2.5, "tiles a"), 2.0, "tiles b")
    np.testing.assert_allclose(predict_error(twice, lr, sr), 5.0 * predict_error(head, lr, sr), rtol=1e-4)
    assert twice.meta["level_factor"] == "5" and twice.meta["recalibrated_on"] == "tiles b"
    assert "level_factor" not in head.meta
    save_head(twice, tmp_path / "head.safetensors", SHA, twice.meta)
    assert load_head(tmp_path / "head.safetensors", SHA).meta["level_factor"] == "5"
    with pytest.raises(ValueError, match="positive"):
        rescaled(head, 0.0, "nothing")


def test_sparsification_curve_of_the_oracle_falls_to_the_smallest_errors():
    actual = np.array([1.0, 2.0, 3.0, 4.0])
    curve = sparsification_curve(actual, actual, steps=4)
    np.testing.assert_allclose(curve, np.array([2.5, 2.0, 1.5, 1.0]) / 2.5)
    assert spearman(np.ones(4), actual) != spearman(np.ones(4), actual)  # nan: a constant predictor ranks nothing


def test_calibration_table_pools_the_tiles_of_a_family_per_lr_kind():
    pooled = {}
    for seed in range(2):
        b, errors = _laplace_errors(seed)
        add_tile(pooled.setdefault(("clean", "neon"), Pooled()), b, errors, np.ones_like(b) + b)
    table = format_table(pooled, "title")
    row = next(line for line in table.splitlines() if line.startswith("| clean | neon |"))
    cells = [cell.strip() for cell in row.strip("|").split("|")]
    assert cells[2] == "2" and abs(float(cells[3]) - 50) < 2 and abs(float(cells[4]) - 1) < 0.05
    assert float(cells[5]) > 0.8 and float(cells[7]) > 0.8  # b + 1 ranks blocks exactly as b does


def test_head_crops_can_include_single_band_and_sensor_degraded_crops(tmp_path):
    write_raster(str(tmp_path / "rgb.tif"), (smooth_image(3, 96, 96, seed=1) * 3000 + 50).astype(np.uint16), nodata=0)
    write_raster(str(tmp_path / "b8.tif"), (smooth_image(1, 96, 96, seed=2) * 3000 + 50).astype(np.uint16), nodata=0)
    blocks = {"train": [[0, 0, 96, 96]], "validation": [], "test": []}
    manifest = tmp_path / "manifest.json"
    manifest.write_text(json.dumps({
        "scenes": [{"name": "rgb", "file": "rgb.tif", "sensor": "s2", "nodata": 0, "blocks": blocks}],
        "bands": [{"name": "b8", "file": "b8.tif", "sensor": "s2", "nodata": 0, "blocks": blocks}]}))
    student = load(write_tiny_shipped_like_weights(tmp_path / "tiny.safetensors"))
    sampling = CropSettings(single_band_fraction=1.0, degradation="sensor")
    crops = precompute(student, manifest, count=4, crop=32, degraded_fraction=1.0, seed=0, batch=2, sampling=sampling)
    assert crops["lr"].shape == (4, 3, 8, 8) and crops["sr"].shape == (4, 3, 32, 32)
    assert all(torch.equal(hr[0], hr[1]) and torch.equal(hr[0], hr[2]) for hr in crops["hr"])
    plain = precompute(student, manifest, count=4, crop=32, degraded_fraction=1.0, seed=0, batch=2)
    assert not any(torch.equal(hr[0], hr[1]) for hr in plain["hr"])
    assert not torch.equal(plain["lr"], precompute(student, manifest, count=4, crop=32, degraded_fraction=1.0, seed=0,
                                                   batch=2, sampling=CropSettings(degradation="sensor"))["lr"])


def test_sharpen_scales_the_detail_the_lr_cannot_carry_and_barely_moves_the_lr():
    hr = 0.5 + 0.1 * (torch.rand(3, 64, 64, generator=torch.Generator().manual_seed(0)) - 0.5)
    torch.testing.assert_close(sharpen(hr, 4, 1.0), hr)
    smooth = sharpen(hr, 4, 0.0)
    torch.testing.assert_close(sharpen(hr, 4, 2.0) - smooth, 2 * (hr - smooth))
    sharper = sharpen(hr, 4, 2.0)
    hr_change = (sharper - hr).abs().mean()
    lr_change = (bicubic_downsample(sharper[None], 4) - bicubic_downsample(hr[None], 4)).abs().mean()
    assert lr_change < 0.1 * hr_change


def test_sharpness_jitter_makes_each_crops_lr_from_its_resharpened_hr(tmp_path):
    write_raster(str(tmp_path / "rgb.tif"), (smooth_image(3, 96, 96, seed=1) * 3000 + 50).astype(np.uint16), nodata=0)
    blocks = {"train": [[0, 0, 96, 96]], "validation": [], "test": []}
    manifest = tmp_path / "manifest.json"
    manifest.write_text(json.dumps({
        "scenes": [{"name": "rgb", "file": "rgb.tif", "sensor": "s2", "nodata": 0, "blocks": blocks}]}))
    student = load(write_tiny_shipped_like_weights(tmp_path / "tiny.safetensors"))
    options = dict(count=4, crop=32, degraded_fraction=0.0, seed=0, batch=2)
    plain = precompute(student, manifest, **options)
    jittered = precompute(student, manifest, sharpness_jitter=2.0, **options)
    assert not torch.equal(plain["hr"], jittered["hr"])
    torch.testing.assert_close(jittered["lr"].float(), bicubic_downsample(jittered["hr"].float(), 4).clamp(0, 1),
                               atol=2e-3, rtol=0)
    assert torch.equal(plain["hr"], precompute(student, manifest, sharpness_jitter=1.0, **options)["hr"])
