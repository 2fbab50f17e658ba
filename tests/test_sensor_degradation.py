"""Sensor degradation: the drawn PSF's MTF at Nyquist, signal-dependent noise, JPEG2000, determinism by seed."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from training.data.sensor_degradation import (SensorSettings, add_sensor_noise, blur, box_mtf, jpeg2000, psf_kernel,
                                         sensor_degrade, system_mtf)

torch.set_num_threads(1)


def _hr(size: int = 64, batch: int = 2, channels: int = 3) -> torch.Tensor:
    return torch.rand(batch, channels, size, size, generator=torch.Generator().manual_seed(1))


def _measured_mtf(mtf: float, scale: int) -> float:
    """Amplitude ratio of a sinusoid at the LR Nyquist frequency after the PSF and the detector's box average."""
    size = 96 * scale
    x = torch.arange(size, dtype=torch.float64)
    wave = torch.cos(2 * math.pi * x / (2 * scale)).expand(size, size)[None, None]
    blurred = blur(wave, psf_kernel(mtf, scale))
    box = torch.ones(1, 1, 1, scale, dtype=torch.float64) / scale
    integrated = F.conv2d(blurred, box)  # the detector's footprint, before sampling
    row = integrated[0, 0, size // 2, 8 * scale:8 * scale + 32 * 2 * scale]  # whole periods, away from the edges
    phase = 2 * math.pi * torch.arange(row.numel(), dtype=torch.float64) / (2 * scale)
    return 2 * math.hypot(float((row * torch.cos(phase)).mean()), float((row * torch.sin(phase)).mean()))


@pytest.mark.parametrize("scale", [2, 4, 8])
@pytest.mark.parametrize("seed", range(6))
def test_the_drawn_psf_has_its_mtf_at_nyquist_within_the_range(scale, seed):
    generator = torch.Generator().manual_seed(seed)
    low, high = SensorSettings().mtf_nyquist
    mtf = low + (high - low) * float(torch.rand((), generator=generator, dtype=torch.float64))
    measured = _measured_mtf(mtf, scale)
    assert low - 1e-3 <= measured <= high + 1e-3
    assert measured == pytest.approx(mtf, abs=1e-3)
    assert system_mtf(psf_kernel(mtf, scale), scale) == pytest.approx(mtf, abs=1e-6)


def test_an_mtf_above_what_the_detector_allows_is_refused():
    with pytest.raises(ValueError, match="not reachable"):
        psf_kernel(box_mtf(4) + 0.01, 4)


def test_noise_variance_grows_with_the_signal():
    generator = torch.Generator().manual_seed(0)
    levels = [0.05, 0.3, 0.9]
    variances = []
    for level in levels:
        flat = torch.full((1, 256, 256), level, dtype=torch.float64)
        variances.append(float((add_sensor_noise(flat, shot=1e-3, read=1e-3, generator=generator) - level).var()))
    assert variances[0] < variances[1] < variances[2]
    for level, variance in zip(levels, variances):
        assert variance == pytest.approx(1e-3 * level + 1e-6, rel=0.05)


def test_same_seed_gives_the_same_lr_and_another_seed_differs():
    hr = _hr()
    first = sensor_degrade(hr, 4, torch.Generator().manual_seed(42))
    assert torch.equal(first, sensor_degrade(hr, 4, torch.Generator().manual_seed(42)))
    assert not torch.equal(first, sensor_degrade(hr, 4, torch.Generator().manual_seed(43)))


@pytest.mark.parametrize("channels", [1, 3, 4])
def test_lr_is_hr_over_scale_in_range_for_any_band_count(channels):
    lr = sensor_degrade(_hr(channels=channels), 4, torch.Generator().manual_seed(0))
    assert lr.shape == (2, channels, 16, 16)
    assert float(lr.min()) >= 0.0 and float(lr.max()) <= 1.0


def test_without_noise_or_coding_a_flat_image_stays_flat():
    quiet = SensorSettings(shot=(1e-12, 1e-12), read=(1e-12, 1e-12), jpeg2000_probability=0.0)
    lr = sensor_degrade(torch.full((1, 3, 32, 32), 0.4), 4, torch.Generator().manual_seed(0), quiet)
    torch.testing.assert_close(lr, torch.full((1, 3, 8, 8), round(0.4 * 4095) / 4095))


def test_jpeg2000_is_lossy_and_lower_quality_loses_more():
    image = _hr(size=64, batch=1)[0]
    levels = 4095
    exact = torch.round(image * levels) / levels
    errors = [float((jpeg2000(exact, quality, 12) - exact).abs().mean()) for quality in (40.0, 5.0)]
    assert 0.0 < errors[0] < errors[1]
    assert jpeg2000(exact, 5.0, 12).shape == exact.shape


def test_settings_change_the_lr_through_the_generator_only():
    hr = _hr()
    settings = dataclasses.replace(SensorSettings(), jpeg2000_probability=0.0)
    first = sensor_degrade(hr, 2, torch.Generator().manual_seed(3), settings)
    np.testing.assert_array_equal(first.numpy(), sensor_degrade(hr, 2, torch.Generator().manual_seed(3), settings))
