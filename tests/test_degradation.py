"""Real-ESRGAN degradation: seeded, exact LR size, normalised kernels, and the clean path when switched off."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from training.data.realesrgan_degradation import (MAX_KERNEL, BlurSettings, DegradationSettings, StageSettings, bicubic_downsample,
                                  degrade, gaussian_kernel, plateau_kernel, random_kernel, sinc_kernel)

torch.set_num_threads(1)


def _hr(size: int = 64, batch: int = 2) -> torch.Tensor:
    return torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(1))


def _off() -> DegradationSettings:
    """Every stochastic step off: no blur, no resize, no noise, no JPEG, no sinc; final resize bicubic."""
    stage = StageSettings(blur=BlurSettings(probability=0.0), resize_probabilities=(0.0, 0.0, 1.0),
                          resize_modes=("bicubic",), noise_probability=0.0, jpeg_probability=0.0)
    return DegradationSettings(first=stage, second=stage, final_sinc_probability=0.0,
                               final_resize_modes=("bicubic",), quantise=False)


def test_same_seed_gives_the_same_lr():
    hr = _hr()
    first = degrade(hr, 4, torch.Generator().manual_seed(42))
    second = degrade(hr, 4, torch.Generator().manual_seed(42))
    assert torch.equal(first, second)
    assert not torch.equal(first, degrade(hr, 4, torch.Generator().manual_seed(43)))


@pytest.mark.parametrize("scale", [4, 8])
@pytest.mark.parametrize("seed", range(4))
def test_lr_is_exactly_hr_over_scale_and_in_range(scale, seed):
    lr = degrade(_hr(64), scale, torch.Generator().manual_seed(seed))
    assert lr.shape == (2, 3, 64 // scale, 64 // scale)
    assert float(lr.min()) >= 0.0 and float(lr.max()) <= 1.0


def test_quantised_lr_holds_8_bit_levels():
    lr = degrade(_hr(), 4, torch.Generator().manual_seed(0))
    torch.testing.assert_close(lr * 255, torch.round(lr * 255), rtol=0, atol=1e-4)


def test_size_not_a_multiple_of_the_scale_is_refused():
    with pytest.raises(ValueError, match="multiple of the scale 8"):
        degrade(_hr(60), 8, torch.Generator().manual_seed(0))


def test_everything_off_with_bicubic_is_the_clean_path():
    hr = _hr()
    lr = degrade(hr, 4, torch.Generator().manual_seed(0), _off())
    torch.testing.assert_close(lr, bicubic_downsample(hr, 4).clamp(0, 1), rtol=0, atol=1e-6)


def test_noise_alone_changes_the_lr():
    stage = dataclasses.replace(_off().first, noise_probability=1.0)
    settings = dataclasses.replace(_off(), first=stage)
    hr = _hr()
    assert not torch.allclose(degrade(hr, 4, torch.Generator().manual_seed(0), settings),
                              bicubic_downsample(hr, 4).clamp(0, 1), atol=1e-3)


@pytest.mark.parametrize("kernel", [
    gaussian_kernel(21, 3.0, 3.0, 0.0),
    gaussian_kernel(9, 0.5, 2.5, 1.0),
    gaussian_kernel(15, 1.5, 0.7, -0.4, beta=3.5),
    plateau_kernel(11, 2.0, 1.0, 0.3, beta=1.5),
    sinc_kernel(7, math.pi / 3),
    sinc_kernel(21, math.pi / 5),
], ids=["iso", "aniso", "generalized", "plateau", "sinc7", "sinc21"])
def test_each_kernel_sums_to_one_and_has_the_common_size(kernel):
    assert kernel.shape == (MAX_KERNEL, MAX_KERNEL)
    assert float(kernel.sum()) == pytest.approx(1.0, abs=1e-5)


def test_random_kernels_sum_to_one_and_are_centred():
    generator = torch.Generator().manual_seed(0)
    for _ in range(50):
        kernel = random_kernel(BlurSettings(sinc_probability=0.3), generator)
        assert float(kernel.sum()) == pytest.approx(1.0, abs=1e-5)
        axis = torch.arange(MAX_KERNEL, dtype=torch.float32) - MAX_KERNEL // 2
        assert float((kernel.sum(0) * axis).sum()) == pytest.approx(0.0, abs=1e-4)


def test_anisotropic_kernel_is_wider_along_its_long_axis():
    kernel = gaussian_kernel(21, 4.0, 1.0, 0.0)
    centre = MAX_KERNEL // 2
    assert float(kernel[centre, centre + 4]) > float(kernel[centre + 4, centre])
