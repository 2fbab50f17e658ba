"""Make LR training inputs from HR crops: clean bicubic downsampling and the Real-ESRGAN second-order degradation.

Written from the description in Wang et al., "Real-ESRGAN: Training Real-World
Blind Super-Resolution with Pure Synthetic Data" (ICCVW 2021), §3 and its
training settings: two rounds of blur -> random resize -> noise -> JPEG, then
a final resize to HR/scale combined with a sinc filter (ringing/overshoot),
in either order with JPEG. Every random draw comes from the torch.Generator
passed in (no global RNG), so a seed gives the same LR on any machine; all
operations are batched over [B, 3, H, W] tensors in [0, 1], each sample with
its own kernel, noise and JPEG quality (a stage's resize factor is drawn once
per batch, since sizes must agree within it, as in the paper's training code).
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

KERNEL_TYPES = ("iso", "aniso", "generalized_iso", "generalized_aniso", "plateau_iso", "plateau_aniso")
RESIZE_MODES = ("area", "bilinear", "bicubic")
MAX_KERNEL = 21


@dataclass(frozen=True)
class BlurSettings:
    """One stage's blur: kernel family probabilities and parameter ranges (Real-ESRGAN defaults, stage 1)."""

    probability: float = 1.0
    kernel_probabilities: tuple[float, ...] = (0.45, 0.25, 0.12, 0.03, 0.12, 0.03)
    sinc_probability: float = 0.1
    sigma: tuple[float, float] = (0.2, 3.0)
    beta_generalized: tuple[float, float] = (0.5, 4.0)
    beta_plateau: tuple[float, float] = (1.0, 2.0)
    kernel_sizes: tuple[int, int] = (7, MAX_KERNEL)


@dataclass(frozen=True)
class StageSettings:
    """Resize, noise and JPEG of one degradation stage (Real-ESRGAN defaults, stage 1).

    resize_probabilities: up, down, keep. resize_range: scale factor range
    (up draws from [1, hi], down from [lo, 1]); the second stage's factor is
    relative to the LR size, so even "keep" brings it to HR/scale there.
    resize_modes: interpolations drawn from with equal chance. noise_range is the Gaussian
    sigma in 8-bit levels; otherwise Poisson noise scaled by poisson_range.
    """

    blur: BlurSettings = BlurSettings()
    resize_probabilities: tuple[float, float, float] = (0.2, 0.7, 0.1)
    resize_range: tuple[float, float] = (0.15, 1.5)
    resize_modes: tuple[str, ...] = RESIZE_MODES
    noise_probability: float = 1.0
    gaussian_noise_probability: float = 0.5
    noise_range: tuple[float, float] = (1.0, 30.0)
    poisson_range: tuple[float, float] = (0.05, 3.0)
    gray_noise_probability: float = 0.4
    jpeg_probability: float = 1.0
    jpeg_range: tuple[int, int] = (30, 95)


SECOND_STAGE = StageSettings(
    blur=BlurSettings(probability=0.8, sigma=(0.2, 1.5)),
    resize_probabilities=(0.3, 0.4, 0.3), resize_range=(0.3, 1.2),
    noise_range=(1.0, 25.0), poisson_range=(0.05, 2.5))


@dataclass(frozen=True)
class DegradationSettings:
    """The whole second-order pipeline; defaults are Real-ESRGAN's x4 training settings.

    final_sinc_probability: chance of the sinc filter applied with the final
    resize. final_resize_modes: interpolations the final resize draws from.
    quantise: round to 8-bit levels at the end, as the paper's LR images are 8-bit.
    """

    first: StageSettings = StageSettings()
    second: StageSettings = SECOND_STAGE
    final_sinc_probability: float = 0.8
    final_resize_modes: tuple[str, ...] = RESIZE_MODES
    quantise: bool = True


def bicubic_downsample(hr: torch.Tensor, scale: int) -> torch.Tensor:
    """Clean LR: antialiased bicubic downsampling of [B, C, H, W] by `scale` (H and W multiples of it).

    The antialiased kernel matches MATLAB's imresize, the usual clean LR of SR papers.
    """
    return _resize(hr, _lr_size(hr, scale), "bicubic")


def degrade(hr: torch.Tensor, scale: int, generator: torch.Generator,
            settings: DegradationSettings = DegradationSettings()) -> torch.Tensor:
    """Real-ESRGAN second-order degradation of a [B, 3, H, W] batch in [0, 1] to [B, 3, H/scale, W/scale]."""
    out_size = _lr_size(hr, scale)
    height, width = hr.shape[-2:]
    out = _stage(hr, settings.first, generator, lambda s: (round(height * s), round(width * s)))
    out = _stage(out, settings.second, generator,
                 lambda s: (round(height / scale * s), round(width / scale * s)))
    out = _final(out, settings, out_size, generator)
    if settings.quantise:
        out = torch.round(out * 255.0) / 255.0
    return out


def _lr_size(hr: torch.Tensor, scale: int) -> tuple[int, int]:
    height, width = hr.shape[-2:]
    if height % scale or width % scale:
        raise ValueError(f"HR size {height}x{width} is not a multiple of the scale {scale}")
    return height // scale, width // scale


def _stage(images: torch.Tensor, stage: StageSettings, generator: torch.Generator, size_for) -> torch.Tensor:
    """Blur -> resize -> noise -> JPEG. The resize draw is one per batch, as sizes must agree within it."""
    out = blur(images, stage.blur, generator)
    direction = _choice(3, stage.resize_probabilities, generator)
    low, high = stage.resize_range
    factor = (_uniform(1.0, high, generator) if direction == 0
              else _uniform(low, 1.0, generator) if direction == 1 else 1.0)
    mode = stage.resize_modes[_choice(len(stage.resize_modes), [1] * len(stage.resize_modes), generator)]
    size = tuple(max(1, v) for v in size_for(factor))
    out = _resize(out, size, mode).clamp(0.0, 1.0)
    out = add_noise(out, stage, generator)
    return jpeg(out, stage, generator)


def _final(images: torch.Tensor, settings: DegradationSettings, size: tuple[int, int],
           generator: torch.Generator) -> torch.Tensor:
    """Resize to the LR size with a sinc filter (or none), before or after the last JPEG, at random."""
    sinc = torch.stack([
        sinc_kernel(_odd_size(settings.first.blur.kernel_sizes, generator),
                    _uniform(math.pi / 3, math.pi, generator))
        if _bernoulli(settings.final_sinc_probability, generator) else _pulse()
        for _ in range(images.shape[0])])
    mode = settings.final_resize_modes[_choice(len(settings.final_resize_modes),
                                               [1] * len(settings.final_resize_modes), generator)]
    if _bernoulli(0.5, generator):
        out = convolve(_resize(images, size, mode), sinc).clamp(0.0, 1.0)
        return jpeg(out, settings.second, generator)
    out = jpeg(images, settings.second, generator)
    return convolve(_resize(out, size, mode), sinc).clamp(0.0, 1.0)


def _resize(images: torch.Tensor, size: tuple[int, int], mode: str) -> torch.Tensor:
    """Interpolate to `size`; shrinking bilinear/bicubic is antialiased, as a sensor integrates over its footprint."""
    if tuple(images.shape[-2:]) == tuple(size):
        return images
    if mode == "area":
        return F.interpolate(images, size=size, mode="area")
    shrinking = size[0] < images.shape[-2] or size[1] < images.shape[-1]
    return F.interpolate(images, size=size, mode=mode, align_corners=False, antialias=shrinking)


def blur(images: torch.Tensor, settings: BlurSettings, generator: torch.Generator) -> torch.Tensor:
    """Convolve each sample with its own random kernel (or leave it, with probability 1 - settings.probability)."""
    kernels = torch.stack([random_kernel(settings, generator) if _bernoulli(settings.probability, generator)
                           else _pulse() for _ in range(images.shape[0])])
    return convolve(images, kernels)


def convolve(images: torch.Tensor, kernels: torch.Tensor) -> torch.Tensor:
    """[B, C, H, W] each convolved with its own [B, k, k] kernel, reflect-padded to keep the size."""
    batch, channels, height, width = images.shape
    size = kernels.shape[-1]
    pad = size // 2
    mode = "reflect" if pad < min(height, width) else "replicate"
    padded = F.pad(images, (pad, pad, pad, pad), mode=mode)
    weight = kernels.to(images.dtype).repeat_interleave(channels, dim=0).unsqueeze(1)
    out = F.conv2d(padded.reshape(1, batch * channels, *padded.shape[-2:]), weight, groups=batch * channels)
    return out.reshape(batch, channels, height, width)


def random_kernel(settings: BlurSettings, generator: torch.Generator) -> torch.Tensor:
    """One [MAX_KERNEL, MAX_KERNEL] kernel summing to 1: a sinc, or a Gaussian-family kernel."""
    size = _odd_size(settings.kernel_sizes, generator)
    if _bernoulli(settings.sinc_probability, generator):
        low = math.pi / 3 if size < 13 else math.pi / 5
        return sinc_kernel(size, _uniform(low, math.pi, generator))
    kind = KERNEL_TYPES[_choice(len(KERNEL_TYPES), settings.kernel_probabilities, generator)]
    sigma_x = _uniform(*settings.sigma, generator)
    isotropic = kind.endswith("iso") and not kind.endswith("aniso")
    sigma_y = sigma_x if isotropic else _uniform(*settings.sigma, generator)
    rotation = 0.0 if isotropic else _uniform(-math.pi, math.pi, generator)
    if kind.startswith("generalized"):
        return gaussian_kernel(size, sigma_x, sigma_y, rotation, beta=_uniform(*settings.beta_generalized, generator))
    if kind.startswith("plateau"):
        return plateau_kernel(size, sigma_x, sigma_y, rotation, beta=_uniform(*settings.beta_plateau, generator))
    return gaussian_kernel(size, sigma_x, sigma_y, rotation)


def _quadratic_form(size: int, sigma_x: float, sigma_y: float, rotation: float) -> torch.Tensor:
    """x^T Σ^-1 x over a size x size grid centred on 0, Σ = R diag(σx², σy²) R^T."""
    cos, sin = math.cos(rotation), math.sin(rotation)
    rot = torch.tensor([[cos, -sin], [sin, cos]], dtype=torch.float64)
    inverse = rot @ torch.diag(torch.tensor([sigma_x ** -2, sigma_y ** -2], dtype=torch.float64)) @ rot.T
    axis = torch.arange(size, dtype=torch.float64) - size // 2
    yy, xx = torch.meshgrid(axis, axis, indexing="ij")
    grid = torch.stack([xx, yy], dim=-1)
    return torch.einsum("...i,ij,...j->...", grid, inverse, grid)


def gaussian_kernel(size: int, sigma_x: float, sigma_y: float, rotation: float, beta: float = 1.0) -> torch.Tensor:
    """(Generalised) Gaussian exp(-½ (xᵀΣ⁻¹x)^β), normalised, padded to MAX_KERNEL; β = 1 is the Gaussian."""
    kernel = torch.exp(-0.5 * _quadratic_form(size, sigma_x, sigma_y, rotation).pow(beta))
    return _pad(kernel / kernel.sum())


def plateau_kernel(size: int, sigma_x: float, sigma_y: float, rotation: float, beta: float) -> torch.Tensor:
    """Plateau-shaped kernel 1 / (1 + (xᵀΣ⁻¹x)^β), normalised and padded to MAX_KERNEL."""
    kernel = 1.0 / (1.0 + _quadratic_form(size, sigma_x, sigma_y, rotation).pow(beta))
    return _pad(kernel / kernel.sum())


def sinc_kernel(size: int, cutoff: float) -> torch.Tensor:
    """2-D circular low-pass (sinc) kernel with cutoff frequency `cutoff` (radians), normalised and padded."""
    axis = torch.arange(size, dtype=torch.float64) - size // 2
    yy, xx = torch.meshgrid(axis, axis, indexing="ij")
    radius = torch.sqrt(xx ** 2 + yy ** 2)
    safe = torch.where(radius == 0, torch.ones_like(radius), radius)
    kernel = cutoff * torch.special.bessel_j1(cutoff * safe) / (2 * math.pi * safe)
    kernel = torch.where(radius == 0, torch.full_like(radius, cutoff ** 2 / (4 * math.pi)), kernel)
    return _pad(kernel / kernel.sum())


def _pulse() -> torch.Tensor:
    kernel = torch.zeros(MAX_KERNEL, MAX_KERNEL, dtype=torch.float64)
    kernel[MAX_KERNEL // 2, MAX_KERNEL // 2] = 1.0
    return kernel


def _pad(kernel: torch.Tensor) -> torch.Tensor:
    pad = (MAX_KERNEL - kernel.shape[-1]) // 2
    return F.pad(kernel, (pad, pad, pad, pad)).float()


def add_noise(images: torch.Tensor, stage: StageSettings, generator: torch.Generator) -> torch.Tensor:
    """Per sample: Gaussian or Poisson noise, colour or gray (one noise field shared by the channels)."""
    out = []
    for image in images:
        if not _bernoulli(stage.noise_probability, generator):
            out.append(image)
            continue
        gaussian = _bernoulli(stage.gaussian_noise_probability, generator)
        gray = _bernoulli(stage.gray_noise_probability, generator)
        if gaussian:
            sigma = _uniform(*stage.noise_range, generator) / 255.0
            shape = (1, *image.shape[1:]) if gray else image.shape
            noise = torch.randn(shape, generator=generator, dtype=image.dtype) * sigma
        else:
            strength = _uniform(*stage.poisson_range, generator)
            source = _luma(image)[None] if gray else image
            levels = source.clamp(0, 1) * 255.0
            noise = (torch.poisson(levels, generator=generator) - levels) / 255.0 * strength
        out.append((image + noise).clamp(0.0, 1.0))
    return torch.stack(out)


def _luma(image: torch.Tensor) -> torch.Tensor:
    return 0.299 * image[0] + 0.587 * image[1] + 0.114 * image[2]


def jpeg(images: torch.Tensor, stage: StageSettings, generator: torch.Generator) -> torch.Tensor:
    """Per sample: JPEG-compress at a random quality through Pillow (8-bit, 4:2:0, as a camera would)."""
    out = []
    for image in images:
        if not _bernoulli(stage.jpeg_probability, generator):
            out.append(image)
            continue
        quality = int(torch.randint(stage.jpeg_range[0], stage.jpeg_range[1] + 1, (1,), generator=generator))
        pixels = (image.clamp(0, 1) * 255.0).round().byte().permute(1, 2, 0).numpy()
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, format="JPEG", quality=quality)
        decoded = np.asarray(Image.open(io.BytesIO(buffer.getvalue())).convert("RGB"))
        out.append(torch.from_numpy(decoded.copy()).permute(2, 0, 1).to(image.dtype) / 255.0)
    return torch.stack(out)


def _uniform(low: float, high: float, generator: torch.Generator) -> float:
    return float(low + (high - low) * torch.rand((), generator=generator, dtype=torch.float64))


def _bernoulli(probability: float, generator: torch.Generator) -> bool:
    return bool(torch.rand((), generator=generator, dtype=torch.float64) < probability)


def _choice(count: int, weights, generator: torch.Generator) -> int:
    probabilities = torch.tensor(weights, dtype=torch.float64)
    return int(torch.multinomial(probabilities / probabilities.sum(), 1, generator=generator))


def _odd_size(bounds: tuple[int, int], generator: torch.Generator) -> int:
    """A random odd kernel side in [low, high]."""
    low, high = bounds
    return 2 * int(torch.randint(low // 2, high // 2 + 1, (1,), generator=generator)) + 1
