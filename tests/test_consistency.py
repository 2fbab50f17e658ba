"""The consistency figures: an output that reduces back to its input scores zero; a shifted one reports its shift."""

from __future__ import annotations

import numpy as np
import pytest
from osgeo import gdal
import torch

from backend.consistency import back_project, consistency_figures, phase_shift, reduce_to_input_grid
from backend.resources import sample_raster_path


def shift_image(image: np.ndarray, dy: float, dx: float) -> np.ndarray:
    """[C, H, W] moved by (dx, dy) pixels (content goes right and down for positive values), bicubic."""
    _, height, width = image.shape
    ys, xs = torch.meshgrid(torch.arange(height, dtype=torch.float64), torch.arange(width, dtype=torch.float64),
                            indexing="ij")
    grid = torch.stack([(xs - dx) / (width - 1) * 2 - 1, (ys - dy) / (height - 1) * 2 - 1], dim=-1)[None].float()
    moved = torch.nn.functional.grid_sample(torch.from_numpy(image)[None], grid, mode="bicubic",
                                            padding_mode="border", align_corners=True)
    return moved[0].numpy()


@pytest.fixture(scope="module")
def sample_hr() -> np.ndarray:
    """A 3-band real Sentinel-2 crop standing in for a super-resolved output."""
    dataset = gdal.Open(str(sample_raster_path()))
    values = dataset.ReadAsArray().astype(np.float32)
    dataset = None
    return values[:, :256, :256]


def test_an_output_that_reduces_to_its_input_scores_zero_difference_angle_and_shift(sample_hr):
    lr = reduce_to_input_grid(sample_hr, 4)
    figures = consistency_figures(lr, sample_hr, 4)
    assert max(figures.mean_abs_difference) < 1e-3
    assert figures.mean_abs_difference_fraction < 1e-6
    assert figures.spectral_angle_degrees < 1e-3
    assert (figures.shift_x, figures.shift_y) == (0.0, 0.0)


@pytest.mark.parametrize("dx, dy", [(0.37, -0.2), (-0.45, 0.3), (1.25, 0.0)])
def test_a_shifted_output_reports_its_shift_within_a_tenth_of_an_input_pixel(sample_hr, dx, dy):
    lr = reduce_to_input_grid(sample_hr, 4)
    moved = shift_image(sample_hr, 4 * dy, 4 * dx)
    figures = consistency_figures(lr, moved, 4)
    assert figures.shift_x == pytest.approx(dx, abs=0.1)
    assert figures.shift_y == pytest.approx(dy, abs=0.1)
    assert figures.mean_abs_difference_fraction > 0.005


def test_a_brighter_band_shows_as_difference_and_spectral_angle(sample_hr):
    lr = reduce_to_input_grid(sample_hr, 4)
    tinted = sample_hr.copy()
    tinted[0] *= 1.2
    figures = consistency_figures(lr, tinted, 4)
    assert figures.mean_abs_difference[0] == pytest.approx(0.2 * np.abs(lr[0]).mean(), rel=0.01)
    assert figures.mean_abs_difference[1] < 1e-3
    assert figures.spectral_angle_degrees > 1.0


def test_invalid_pixels_are_left_out_of_the_figures(sample_hr):
    lr = reduce_to_input_grid(sample_hr, 4)
    wrong = sample_hr.copy()
    wrong[:, :32, :] = 0
    valid = np.ones(lr.shape[1:], bool)
    valid[:10, :] = False
    figures = consistency_figures(lr, wrong, 4, valid)
    assert max(figures.mean_abs_difference) < 1e-3


def test_phase_shift_of_an_integer_circular_shift_is_exact():
    rng = np.random.default_rng(0)
    image = rng.standard_normal((64, 80))
    assert phase_shift(image, np.roll(image, (3, -5), axis=(0, 1))) == pytest.approx((-5.0, 3.0), abs=0.05)


def test_back_projection_makes_an_inconsistent_output_reduce_to_its_input(sample_hr):
    lr = reduce_to_input_grid(sample_hr, 4) / 10000
    blurred = torch.nn.functional.avg_pool2d(torch.from_numpy(sample_hr / 10000)[None], 5, 1, 2)
    before = consistency_figures(lr, blurred[0].numpy(), 4)
    corrected = back_project(blurred, torch.from_numpy(lr)[None], 4)
    after = consistency_figures(lr, corrected[0].numpy(), 4)
    assert before.mean_abs_difference_fraction > 0.01
    assert after.mean_abs_difference_fraction < 0.1 * before.mean_abs_difference_fraction
