"""PSNR-Y, SSIM-Y and NIQE: exact values where they are known, and NIQE's ordering on a real image."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from backend.resources import sample_raster_path
from training.data.scene_split import whole_scene
from training.data.crops import SceneReader, SceneRef
from training.evaluation.metrics import NiqeModel, niqe, niqe_features, niqe_score, psnr_y, rgb_to_y, ssim_y

torch.set_num_threads(1)
NIQE_PARAMS = Path(__file__).resolve().parent.parent / "data" / "niqe_pris_params.npz"


def _image(seed: int = 0, size: int = 48) -> torch.Tensor:
    return torch.rand(3, size, size, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def test_y_of_black_and_white_is_16_and_235():
    assert float(rgb_to_y(torch.zeros(3, 1, 1))) == pytest.approx(16.0)
    assert float(rgb_to_y(torch.ones(3, 1, 1))) == pytest.approx(235.0)


def test_psnr_of_identical_images_is_infinite():
    image = _image()
    assert psnr_y(image, image.clone()) == math.inf


def test_psnr_of_a_known_error_equals_the_hand_value():
    reference = torch.full((3, 32, 32), 0.5, dtype=torch.float64)
    sign = torch.ones(32, 32, dtype=torch.float64)
    sign[::2, 1::2] = -1
    sign[1::2, ::2] = -1
    output = reference + 0.02 * sign  # every channel off by 0.02, so Y is off by 0.02 * 219 levels
    expected = 10 * math.log10(255 ** 2 / (0.02 * 219) ** 2)
    assert psnr_y(output, reference) == pytest.approx(expected, abs=1e-9)


def test_border_crop_ignores_errors_at_the_edge():
    reference = _image()
    output = reference.clone()
    output[:, :4, :] = 0
    assert psnr_y(output, reference, border=4) == math.inf
    assert psnr_y(output, reference, border=0) < 30


def test_ssim_of_identical_images_is_one_and_lower_with_noise():
    image = _image()
    assert ssim_y(image, image.clone()) == pytest.approx(1.0, abs=1e-12)
    noisy = (image + 0.3 * torch.randn(image.shape, generator=torch.Generator().manual_seed(1),
                                       dtype=torch.float64)).clamp(0, 1)
    assert ssim_y(noisy, image) < 0.9


def test_metrics_take_numpy_arrays_too():
    image = _image().numpy().astype(np.float32)
    assert psnr_y(image, image) == math.inf and ssim_y(image, image) == pytest.approx(1.0)


def _window() -> np.ndarray:
    axis = np.arange(7) - 3
    line = np.exp(-axis ** 2 / (2 * (7 / 6) ** 2))
    window = np.outer(line, line)
    return window / window.sum()


@pytest.fixture(scope="module", params=["basicsr", "fitted here"])
def niqe_model(request, tmp_path_factory, sample_crop) -> NiqeModel:
    """The basicsr pristine model when `prepare` has extracted it, and one fitted here on the sample's patches.

    The second needs no download, so the NIQE machinery is tested on every
    machine: a model fitted on clean patches must prefer clean images.
    """
    if request.param == "basicsr":
        if not NIQE_PARAMS.is_file():
            pytest.skip("data/niqe_pris_params.npz is made by `python -m training.data.sources prepare`")
        return NiqeModel(NIQE_PARAMS)
    path = tmp_path_factory.mktemp("niqe") / "pristine.npz"
    np.savez(path, mu_pris_param=np.zeros((1, 36)), cov_pris_param=np.eye(36), gaussian_window=_window())
    window_only = NiqeModel(path)
    views = [torch.rot90(sample_crop, k, dims=(1, 2)) for k in range(4)]
    views += [view.flip(-1) for view in views]
    shifted = [view[:, s:s + 192, s:s + 192] for view in views for s in (0, 24, 48)]
    features = torch.cat([niqe_features(view, window_only) for view in shifted]).numpy()
    np.savez(path, mu_pris_param=features.mean(0)[None], cov_pris_param=np.cov(features, rowvar=False),
             gaussian_window=_window())
    return NiqeModel(path)


@pytest.fixture(scope="module")
def sample_crop() -> torch.Tensor:
    """The shipped Sentinel-2 sample, stretched 2-98 % to [0, 1]: a real 256 px image."""
    scene = SceneRef("sample", sample_raster_path(), "sentinel2", blocks=whole_scene(256, 256, "test"))
    values, _, _ = SceneReader([scene]).read(scene, 0, 0, 256, 256)
    return torch.from_numpy(values).double()


def test_niqe_is_lower_for_the_real_image_than_for_noised_or_blurred_copies(niqe_model, sample_crop):
    clean = niqe(sample_crop, niqe_model)
    noise = torch.randn(sample_crop.shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    noised = (sample_crop + 0.15 * noise).clamp(0, 1)
    blurred = F.interpolate(F.avg_pool2d(sample_crop[None], 8), scale_factor=8, mode="bilinear")[0]
    assert clean < niqe(noised, niqe_model)
    assert clean < niqe(blurred, niqe_model)


def test_niqe_features_of_several_images_score_together(niqe_model, sample_crop):
    features = niqe_features(sample_crop, niqe_model)
    assert features.shape == (4, 36)
    pooled = torch.cat([features, niqe_features(sample_crop.flip(-1), niqe_model)])
    assert math.isfinite(niqe_score(pooled, niqe_model))


def test_niqe_without_its_parameters_file_says_how_to_get_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="training.data.sources"):
        NiqeModel(tmp_path / "missing.npz")


def test_niqe_refuses_an_image_smaller_than_a_patch(niqe_model):
    with pytest.raises(ValueError, match="96 px"):
        niqe(_image(size=64), niqe_model)
