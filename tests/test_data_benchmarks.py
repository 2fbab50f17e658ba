"""Quality benchmark helpers: reference CNN size and weights round trip, GDAL resampling, the quality table."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from benchmarks.quality import CARD_BEGIN, CARD_END, embed_in_card, evaluate, format_margins, format_table, gdal_upsample
from benchmarks.reference_cnn import ReferenceCNN, load_reference, save_reference
from rasters import smooth_image, write_raster
from training.evaluation.lr import LR_KINDS, make_lr
from training.evaluation.metrics import NiqeModel
from training.evaluation.scoring import Scores

torch.set_num_threads(1)


def test_reference_cnn_has_its_stated_size_and_upscales_by_its_scale():
    model = ReferenceCNN(4)
    assert 0.8e6 < sum(p.numel() for p in model.parameters()) < 0.9e6
    assert model(torch.rand(1, 3, 12, 10)).shape == (1, 3, 48, 40)
    assert ReferenceCNN(8)(torch.rand(1, 3, 6, 6)).shape == (1, 3, 48, 48)


def test_reference_weights_round_trip_through_safetensors(tmp_path):
    model = ReferenceCNN(4, channels=8, blocks=2)
    path = tmp_path / "reference.safetensors"
    save_reference(model, path, {"steps": "3"})
    loaded = load_reference(path)
    lr = torch.rand(1, 3, 8, 8)
    torch.testing.assert_close(loaded(lr), model.eval()(lr))
    assert loaded.meta["steps"] == "3" and loaded.config() == {"scale": 4, "channels": 8, "blocks": 2}


def test_gdal_cubic_keeps_a_constant_image_and_multiplies_the_size():
    lr = np.full((3, 10, 12), 0.25, np.float32)
    for algorithm in ("cubic", "lanczos"):
        hr = gdal_upsample(lr, 4, algorithm)
        assert hr.shape == (3, 40, 48)
        np.testing.assert_allclose(hr, 0.25, atol=1e-6)


def test_degraded_lr_is_fixed_by_its_seed():
    hr = smooth_image(3, 64, 64).astype(np.float32)
    np.testing.assert_array_equal(make_lr(hr, 4, "degraded", 5), make_lr(hr, 4, "degraded", 5))
    assert make_lr(hr, 4, "clean", 5).shape == (3, 16, 16)


def test_quality_table_has_a_row_per_lr_kind_sensor_and_method(tmp_path):
    values = (smooth_image(3, 200, 400) * 4000 + 100).astype(np.uint16)
    write_raster(str(tmp_path / "scene.tif"), values, nodata=0)
    manifest = tmp_path / "manifest.json"
    manifest.write_text(json.dumps({"scenes": [{"name": "scene", "file": "scene.tif", "sensor": "s2", "nodata": 0,
                                                "blocks": {"train": [], "validation": [],
                                                           "test": [[0, 0, 400, 200]]}}]}))
    window = np.outer(*(2 * [np.exp(-(np.arange(7) - 3) ** 2 / (2 * (7 / 6) ** 2))]))
    np.savez(tmp_path / "niqe.npz", mu_pris_param=np.zeros((1, 36)), cov_pris_param=np.eye(36),
             gaussian_window=window / window.sum())
    niqe_model = NiqeModel(tmp_path / "niqe.npz")
    methods = {"GDAL cubic": lambda lr: gdal_upsample(lr, 4, "cubic")}
    scores = evaluate(manifest, methods, 4, niqe_model, role="test", tile=192)
    table = format_table(scores, niqe_model, list(methods), 4, "test")
    rows = [line for line in table.splitlines() if line.startswith("| clean") or line.startswith("| degraded")]
    assert len(rows) == len(LR_KINDS) * 2  # sensor s2 and overall, one method
    clean_psnr = float(rows[0].split("|")[5])
    degraded_psnr = float(rows[2].split("|")[5])
    assert clean_psnr > degraded_psnr > 0


def margin_cells(psnr: dict[tuple[str, str], list[float]], baseline: str, kind: str) -> list[tuple[str, str]]:
    """(sensor, lead over `baseline`) as format_margins prints them for `kind`, from per-tile PSNRs of "ours"."""
    scores = {(lr, method, sensor): Scores(list(values), [], [])
              for lr in LR_KINDS for (method, sensor), values in psnr.items()}
    rows = [line.split("|") for line in format_margins(scores, "ours", [baseline]).splitlines()
            if line.startswith(f"| {kind}")]
    return [(row[2].strip(), row[3].strip()) for row in rows]


def test_margins_show_a_small_deficit_that_two_decimals_would_round_to_a_tie():
    psnr = {("ours", "a"): [20.0, 22.0], ("cnn", "a"): [21.003, 21.003], ("ours", "b"): [30.5], ("cnn", "b"): [29.903]}
    assert margin_cells(psnr, "cnn", "clean") == [("a", "-0.003"), ("b", "+0.597"), ("**overall**", "+0.297")]


def test_margins_round_down_so_a_lead_just_short_of_a_bar_does_not_read_as_meeting_it():
    psnr = {("ours", "a"): [20.4995], ("cubic", "a"): [20.0], ("ours", "b"): [19.9996], ("cubic", "b"): [20.0]}
    assert margin_cells(psnr, "cubic", "degraded") == [("a", "+0.499"), ("b", "-0.001"), ("**overall**", "+0.249")]


def test_card_table_is_replaced_between_its_markers_and_the_rest_is_kept():
    card = f"# Card\nbefore\n{CARD_BEGIN}\n| old | table |\nCommand: old\n{CARD_END}\n\nafter\n"
    updated = embed_in_card(card, "| new | table |\nCommand: new\n")
    assert updated == f"# Card\nbefore\n{CARD_BEGIN}\n| new | table |\nCommand: new\n{CARD_END}\n\nafter\n"
    assert embed_in_card(updated, "| new | table |\nCommand: new\n") == updated


def test_card_without_markers_is_refused_rather_than_appended_to():
    with pytest.raises(ValueError, match="begin: table written"):
        embed_in_card(f"# Card\n{CARD_END}\n{CARD_BEGIN}\n", "| t |")
