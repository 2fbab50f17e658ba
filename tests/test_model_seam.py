"""The seam measurement: it finds no seam for a local model and measures one for the student."""

from __future__ import annotations

import numpy as np
import torch

from backend.models import StudentConfig, build
from backend.models.bicubic import BicubicUpscaler
from backend.models.norm_statistics import fixed_group_norm_statistics, record_group_norm_statistics
from benchmarks.seam import border_band, seam_report, synthetic_scene

torch.set_num_threads(1)


def test_border_band_is_the_shared_strip_between_two_tiles_widened_by_the_scale():
    band = border_band(width=20, height=8, tile=12, overlap=4, scale=2)
    assert band.shape == (16, 40)
    # LR columns 8..11 are shared by both tiles: HR 16..23, plus 2 HR pixels beyond each tile edge
    assert np.array_equal(np.flatnonzero(band.any(axis=0)), np.arange(14, 26))
    assert band[:, 14:26].all()


def test_local_model_shows_no_seam():
    report = seam_report(BicubicUpscaler(4), synthetic_scene(40), tile=24, overlap=8)
    assert report["band_mad"] < 1e-6 and report["max_abs"] < 1e-5


def test_student_seam_is_measured_in_band_and_interior():
    torch.manual_seed(0)
    report = seam_report(build(StudentConfig.tiny(4)), synthetic_scene(40), tile=24, overlap=8)
    assert set(report) == {"band_mad", "interior_mad", "max_abs", "band_fraction"}
    assert 0 < report["band_mad"] <= report["max_abs"]
    assert 0 < report["band_fraction"] < 1



def test_shared_group_norm_statistics_make_a_crop_normalise_like_the_whole():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.GroupNorm(2, 4), torch.nn.Conv2d(4, 4, 1))
    whole = torch.rand(1, 4, 32, 32) * torch.linspace(0, 3, 32)  # content that varies across the window
    with torch.no_grad(), record_group_norm_statistics(model) as statistics:
        reference = model(whole)
    crop = whole[..., :12, :12]
    with torch.no_grad():
        own = model(crop)
        with fixed_group_norm_statistics(model, statistics):
            shared = model(crop)
            again = model(whole)
    assert torch.allclose(again, reference, atol=1e-5)
    assert torch.allclose(shared, reference[..., :12, :12], atol=1e-5)
    assert not torch.allclose(own, reference[..., :12, :12], atol=1e-2)
    assert all("forward" not in vars(m) for m in model.modules()), "the patch must be gone after the block"

