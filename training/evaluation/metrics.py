"""Image-quality figures for SR results: PSNR and SSIM on the Y channel, and the no-reference NIQE.

PSNR and SSIM follow the SR papers' convention: BT.601 luma (Y of YCbCr, the
16-235 range) of RGB images in [0, 1], a border of `scale` pixels cropped, and
SSIM with an 11x11 Gaussian window (sigma 1.5) on 0-255 values (Wang et al.
2004). NIQE (Mittal et al. 2013) measures how far the statistics of an image's
normalised luminance are from those of pristine natural images: lower is more
natural. Its pristine model is a parameters file (`niqe_pris_params.npz`,
extracted from the `basicsr` sdist by `training.data.sources`), read from a
local path and never downloaded.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Union

import numpy as np
import torch
import torch.nn.functional as F

PathLike = Union[str, Path]
NIQE_PATCH = 96
# BT.601 RGB -> Y weights for values in [0, 1], giving Y in [16, 235] on the 0-255 scale.
_Y_WEIGHTS = (65.481, 128.553, 24.966)


def rgb_to_y(image: torch.Tensor) -> torch.Tensor:
    """[..., 3, H, W] RGB in [0, 1] -> [..., H, W] BT.601 luma on the 0-255 scale (16-235)."""
    r, g, b = image.to(torch.float64).unbind(dim=-3)
    return 16.0 + _Y_WEIGHTS[0] * r + _Y_WEIGHTS[1] * g + _Y_WEIGHTS[2] * b


def _crop(image: torch.Tensor, border: int) -> torch.Tensor:
    return image[..., border:image.shape[-2] - border, border:image.shape[-1] - border] if border else image


def _as_tensor(image) -> torch.Tensor:
    return torch.as_tensor(np.ascontiguousarray(image)) if isinstance(image, np.ndarray) else image


def psnr_y(output, reference, border: int = 0) -> float:
    """PSNR in dB between the Y channels of two [3, H, W] RGB images in [0, 1]; inf when identical."""
    a = _crop(rgb_to_y(_as_tensor(output)), border)
    b = _crop(rgb_to_y(_as_tensor(reference)), border)
    mse = float(torch.mean((a - b) ** 2))
    return math.inf if mse == 0 else 10.0 * math.log10(255.0 ** 2 / mse)


def _gaussian_window(size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    axis = torch.arange(size, dtype=torch.float64) - size // 2
    line = torch.exp(-axis ** 2 / (2 * sigma ** 2))
    window = torch.outer(line, line)
    return (window / window.sum())[None, None]


def ssim_y(output, reference, border: int = 0) -> float:
    """Mean SSIM between the Y channels of two [3, H, W] RGB images in [0, 1] (1 when identical)."""
    a = _crop(rgb_to_y(_as_tensor(output)), border)[None, None]
    b = _crop(rgb_to_y(_as_tensor(reference)), border)[None, None]
    window = _gaussian_window()
    if min(a.shape[-2:]) < window.shape[-1]:
        raise ValueError(f"SSIM needs at least {window.shape[-1]} px a side after cropping the border")
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    mu_a, mu_b = F.conv2d(a, window), F.conv2d(b, window)
    var_a = F.conv2d(a * a, window) - mu_a ** 2
    var_b = F.conv2d(b * b, window) - mu_b ** 2
    cov = F.conv2d(a * b, window) - mu_a * mu_b
    ssim_map = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a ** 2 + mu_b ** 2 + c1) * (var_a + var_b + c2))
    return float(ssim_map.mean())


class NiqeModel:
    """The pristine multivariate Gaussian and the local window NIQE compares against, from a .npz file."""

    def __init__(self, path: PathLike):
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"NIQE parameters {path} not found; run `python -m training.data.sources "
                                    "prepare --out data/`, which extracts niqe_pris_params.npz from the basicsr sdist")
        with np.load(path) as params:
            missing = {"mu_pris_param", "cov_pris_param", "gaussian_window"} - set(params.files)
            if missing:
                raise ValueError(f"{path} is not a NIQE parameters file (missing {', '.join(sorted(missing))})")
            self.mean = torch.from_numpy(params["mu_pris_param"].reshape(-1)).double()
            self.cov = torch.from_numpy(params["cov_pris_param"]).double()
            self.window = torch.from_numpy(params["gaussian_window"]).double()[None, None]


def niqe_features(image, model: NiqeModel, border: int = 0) -> torch.Tensor:
    """[patches, 36] NIQE features of a [3, H, W] RGB image in [0, 1] (96 px patches, two scales).

    Features of several images can be stacked and scored together with
    `niqe_score`, which is steadier than averaging per-image scores of small tiles.
    """
    luma = torch.round(_crop(rgb_to_y(_as_tensor(image)), border))
    rows, cols = luma.shape[-2] // NIQE_PATCH, luma.shape[-1] // NIQE_PATCH
    if rows == 0 or cols == 0:
        raise ValueError(f"NIQE needs at least {NIQE_PATCH} px a side, got {tuple(luma.shape[-2:])}")
    luma = luma[:rows * NIQE_PATCH, :cols * NIQE_PATCH]
    fine = _patch_features(luma, model.window, NIQE_PATCH)
    half = F.interpolate((luma / 255.0)[None, None], scale_factor=0.5, mode="bicubic", antialias=True,
                         align_corners=False)[0, 0] * 255.0
    coarse = _patch_features(half, model.window, NIQE_PATCH // 2)
    return torch.cat([fine, coarse], dim=1)


def niqe_score(features: torch.Tensor, model: NiqeModel) -> float:
    """Distance between the features' Gaussian and the pristine one (lower = more natural)."""
    features = features[~torch.isnan(features).any(dim=1)]
    if features.shape[0] < 2:
        raise ValueError("NIQE needs at least two 96 px patches")
    difference = model.mean - features.mean(dim=0)
    covariance = torch.cov(features.T)
    inverse = torch.linalg.pinv((model.cov + covariance) / 2)
    return float(torch.sqrt(difference @ inverse @ difference))


def niqe(image, model: NiqeModel, border: int = 0) -> float:
    """NIQE of one [3, H, W] RGB image in [0, 1]; needs two 96 px patches at least (e.g. 96 x 192)."""
    return niqe_score(niqe_features(image, model, border), model)


def _patch_features(luma: torch.Tensor, window: torch.Tensor, patch: int) -> torch.Tensor:
    """[patches, 18]: AGGD shape and scale of the MSCN map, and of its products with 4 neighbours."""
    pad = window.shape[-1] // 2
    image = luma[None, None]
    mean = F.conv2d(F.pad(image, (pad,) * 4, mode="replicate"), window)
    square = F.conv2d(F.pad(image * image, (pad,) * 4, mode="replicate"), window)
    deviation = torch.sqrt((square - mean ** 2).abs())
    mscn = ((image - mean) / (deviation + 1.0))[0, 0]
    rows, cols = mscn.shape[0] // patch, mscn.shape[1] // patch
    blocks = mscn[:rows * patch, :cols * patch].reshape(rows, patch, cols, patch).permute(0, 2, 1, 3)
    blocks = blocks.reshape(rows * cols, patch, patch)
    alpha, left, right = _aggd(blocks.reshape(blocks.shape[0], -1))
    features = [alpha, (left + right) / 2]
    for shift in ((0, 1), (1, 0), (1, 1), (-1, 1)):
        products = blocks * torch.roll(blocks, shifts=shift, dims=(1, 2))
        alpha, left, right = _aggd(products.reshape(blocks.shape[0], -1))
        eta = (right - left) * torch.exp(torch.lgamma(2 / alpha) - torch.lgamma(1 / alpha))
        features += [alpha, eta, left, right]
    return torch.stack(features, dim=1)


_SHAPES = torch.arange(0.2, 10.001, 0.001, dtype=torch.float64)
_SHAPE_RATIOS = torch.exp(2 * torch.lgamma(2 / _SHAPES) - torch.lgamma(1 / _SHAPES) - torch.lgamma(3 / _SHAPES))


def _aggd(samples: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Moment-matching fit of an asymmetric generalised Gaussian to each row: (shape, left scale, right scale)."""
    negative, positive = samples < 0, samples > 0
    left = torch.sqrt((samples ** 2 * negative).sum(1) / negative.sum(1).clamp_min(1))
    right = torch.sqrt((samples ** 2 * positive).sum(1) / positive.sum(1).clamp_min(1))
    gamma = left / right
    ratio = samples.abs().mean(1) ** 2 / (samples ** 2).mean(1)
    normalised = ratio * (gamma ** 3 + 1) * (gamma + 1) / (gamma ** 2 + 1) ** 2
    alpha = _SHAPES[torch.argmin((_SHAPE_RATIOS[None, :] - normalised[:, None]) ** 2, dim=1)]
    spread = torch.sqrt(torch.exp(torch.lgamma(1 / alpha) - torch.lgamma(3 / alpha)))
    return alpha, left * spread, right * spread
