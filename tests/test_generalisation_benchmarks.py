"""Generalisation benchmarks: real-pair scoring (fit, Laplacian correlation, half-pixel grid, x4 reduced),
one sensor family's blocks only, and the 4-band band-pass table, on small real GeoTIFFs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from benchmarks import band_passes, real_pairs
from benchmarks.quality import evaluate as quality_evaluate, format_table, gdal_upsample
from plugin_fixtures import write_tiny_shipped_like_weights
from rasters import smooth_image, write_raster
from training.evaluation.lr import LR_KINDS, SENSOR_LR
from training.evaluation.metrics import NiqeModel

torch.set_num_threads(1)


def test_a_gain_and_offset_away_from_the_reference_scores_as_the_reference():
    reference = smooth_image(1, 40, 40)[0]
    psnr, correlation = real_pairs.score((3.0 * reference + 0.2)[None], reference, border=2)
    assert psnr > 100 and correlation == pytest.approx(1.0)


def test_three_bands_are_fitted_to_one_band_as_a_linear_combination():
    bands = smooth_image(3, 40, 40, seed=3)
    reference = 0.2 * bands[0] + 0.5 * bands[1] + 0.3 * bands[2]
    assert real_pairs.score(bands, reference, border=0)[0] > 100
    assert real_pairs.score(bands.mean(axis=0, keepdims=True), reference, border=0)[0] < 60


def test_detail_in_the_wrong_place_correlates_less_than_detail_in_the_right_place():
    reference = smooth_image(1, 64, 64, seed=1)[0]
    shifted = np.roll(reference, 1, axis=1)
    assert real_pairs.score(shifted[None], reference, 4)[1] < real_pairs.score(reference[None], reference, 4)[1]


def test_outputs_are_averaged_onto_a_half_pixel_offset_reference():
    output = np.arange(16, dtype=np.float32).reshape(1, 4, 4)
    moved = real_pairs.onto_reference(output, 0.5)
    assert moved.shape == (1, 3, 3) and moved[0, 0, 0] == pytest.approx((0 + 1 + 4 + 5) / 4)
    assert real_pairs.onto_reference(output, 0.0) is output


def _pair_manifest(tmp_path: Path, offset: float) -> Path:
    """A one-band pair: a smooth 10 m reference and its 2x2 means as the 20 m band (or the half-pixel case)."""
    fine = smooth_image(1, 128, 128, seed=2)
    coarse = fine.reshape(1, 64, 2, 64, 2).mean(axis=(2, 4))
    hr = fine[:, :127, :127] if offset else fine
    write_raster(str(tmp_path / "lr.tif"), (coarse * 4000 + 100).astype(np.uint16), pixel=20.0, nodata=0)
    write_raster(str(tmp_path / "hr.tif"), (hr * 4000 + 100).astype(np.uint16), nodata=0)
    manifest = tmp_path / "manifest.json"
    manifest.write_text(json.dumps({"scenes": [], "pairs": [{
        "name": "p", "sensor": "s2", "scale": 2, "hr_offset": offset, "lr": {"file": "lr.tif", "bands": ["a"]},
        "hr": {"file": "hr.tif", "band": "b"}, "nodata": 0,
        "blocks": {"train": [], "validation": [[0, 0, 32, 64]], "test": [[32, 0, 32, 64]]}}]}))
    return manifest


@pytest.mark.parametrize("offset", [0.0, 0.5])
def test_pair_tiles_come_from_the_role_s_blocks_with_their_reference(tmp_path, offset):
    manifest = _pair_manifest(tmp_path, offset)
    tiles = list(real_pairs.pair_tiles(manifest, role="test", tile=32))
    assert len(tiles) == 2 and all(t.lr.shape == (1, 32, 32) for t in tiles)
    assert all(t.hr.shape == ((63, 63) if offset else (64, 64)) for t in tiles)
    with pytest.raises(ValueError, match="pair\\(s\\) q are not in"):
        list(real_pairs.pair_tiles(manifest, names=["q"]))


def test_x4_weights_are_scored_on_x2_pairs_reduced_by_two_beside_the_reduced_lanczos_control(tmp_path):
    manifest = _pair_manifest(tmp_path, 0.0)
    weights = Path(write_tiny_shipped_like_weights(tmp_path / "tiny_x4.safetensors", 4))
    scores, labels = real_pairs.evaluate(manifest, [weights], role="test", tile=32, border=4)
    assert labels == ["GDAL cubic", "GDAL lanczos", real_pairs.LANCZOS_REDUCED,
                      "SlimDiffSR (tiny_x4.safetensors) x4, reduced x2"]
    assert all(len(scores[("p", label)]) == 2 for label in labels)
    table = real_pairs.format_table(scores, labels, "test")
    assert "| p | SlimDiffSR (tiny_x4.safetensors) x4, reduced x2 |" in table


def test_quality_scores_one_sensor_family_only(tmp_path):
    for name in ("a", "b"):
        values = (smooth_image(3, 192, 192) * 4000 + 100).astype(np.uint16)
        write_raster(str(tmp_path / f"{name}.tif"), values, nodata=0)
    blocks = {"train": [], "validation": [], "test": [[0, 0, 192, 192]]}
    manifest = tmp_path / "manifest.json"
    manifest.write_text(json.dumps({"scenes": [
        {"name": "a", "file": "a.tif", "sensor": "s2", "nodata": 0, "blocks": blocks},
        {"name": "b", "file": "b.tif", "sensor": "neon", "nodata": 0, "blocks": blocks}]}))
    window = np.outer(*(2 * [np.exp(-(np.arange(7) - 3) ** 2 / (2 * (7 / 6) ** 2))]))
    np.savez(tmp_path / "niqe.npz", mu_pris_param=np.zeros((1, 36)), cov_pris_param=np.eye(36),
             gaussian_window=window / window.sum())
    methods = {"GDAL cubic": lambda lr: gdal_upsample(lr, 4, "cubic")}
    scores = quality_evaluate(manifest, methods, 4, NiqeModel(tmp_path / "niqe.npz"), tile=192, sensors=["neon"])
    assert {sensor for _, _, sensor in scores} == {"neon"}
    with pytest.raises(ValueError, match="neo are not in"):
        quality_evaluate(manifest, methods, 4, NiqeModel(tmp_path / "niqe.npz"), tile=192, sensors=["neo"])


def test_the_band_pass_table_scores_rgb_and_nir_against_lanczos(tmp_path):
    values = (smooth_image(4, 96, 96, seed=4) * 4000 + 100).astype(np.uint16)
    write_raster(str(tmp_path / "rgb.tif"), values[:3], nodata=0)
    write_raster(str(tmp_path / "nir.tif"), values[3:], nodata=0)
    blocks = {"train": [], "validation": [], "test": [[0, 0, 96, 96]]}
    manifest = tmp_path / "manifest.json"
    manifest.write_text(json.dumps({
        "scenes": [{"name": band_passes.SCENE, "file": "rgb.tif", "sensor": "sentinel2", "nodata": 0,
                    "blocks": blocks}],
        "bands": [{"name": band_passes.NIR_BAND, "file": "nir.tif", "sensor": "sentinel2", "nodata": 0,
                   "blocks": blocks}]}))
    weights = Path(write_tiny_shipped_like_weights(tmp_path / "tiny.safetensors", 4))
    methods = band_passes.methods_for(4, weights)
    scores = band_passes.evaluate(manifest, methods, 4, role="test", tile=48)
    assert all(len(scores[(kind, name)]) == 4 for kind in band_passes.LR_KINDS for name in methods)
    table = band_passes.format_table(scores, list(methods), 4, "test")
    assert "| clean | GDAL lanczos | 4 |" in table and "+0.000 | +0.000 |" in table


def test_sensor_lr_is_a_third_lr_kind_of_the_quality_table(tmp_path):
    values = (smooth_image(3, 192, 384) * 4000 + 100).astype(np.uint16)
    write_raster(str(tmp_path / "a.tif"), values, nodata=0)
    manifest = tmp_path / "manifest.json"
    manifest.write_text(json.dumps({"scenes": [{"name": "a", "file": "a.tif", "sensor": "s2", "nodata": 0,
                                                "blocks": {"train": [], "validation": [],
                                                           "test": [[0, 0, 384, 192]]}}]}))
    window = np.outer(*(2 * [np.exp(-(np.arange(7) - 3) ** 2 / (2 * (7 / 6) ** 2))]))
    np.savez(tmp_path / "niqe.npz", mu_pris_param=np.zeros((1, 36)), cov_pris_param=np.eye(36),
             gaussian_window=window / window.sum())
    niqe_model = NiqeModel(tmp_path / "niqe.npz")
    methods = {"GDAL cubic": lambda lr: gdal_upsample(lr, 4, "cubic")}
    scores = quality_evaluate(manifest, methods, 4, niqe_model, tile=192, kinds=(*LR_KINDS, SENSOR_LR))
    table = format_table(scores, niqe_model, list(methods), 4, "test")
    assert [line.split("|")[1].strip() for line in table.splitlines() if line.startswith("| ")][1:] == \
        ["clean", "clean", "degraded", "degraded", "sensor", "sensor"]
