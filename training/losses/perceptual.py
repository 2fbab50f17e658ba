"""The perceptual loss: LPIPS (VGG16) from a local weights file, or a documented fallback.

LPIPS needs two pretrained parts: the VGG16 feature extractor and LPIPS's
per-channel linear weights. Give both in one safetensors file with keys
`features.<i>.weight|bias` (torchvision's `vgg16().features` names) and
`lin<k>.model.1.weight` (the `lpips` package's v0.1 names); converting the two
public checkpoints once is enough, nothing is downloaded here.

Fallback without that file: an L1 distance between Laplacian pyramids (5
levels). It is not a learned perceptual metric, but like LPIPS it weighs
detail at several scales, and it needs no weights. The run log says which one
ran.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn

from slimdiffsr_qgis.contract import BadInput

VGG16_LAYOUT = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512]
LPIPS_TAPS = (3, 8, 15, 22, 29)  # indices of relu1_2, relu2_2, relu3_3, relu4_3, relu5_3
LPIPS_SHIFT = (-0.030, -0.088, -0.188)
LPIPS_SCALE = (0.458, 0.448, 0.450)


def vgg16_features() -> nn.Sequential:
    """torchvision's `vgg16().features` layout (same indices, so its tensors load by name)."""
    layers: list[nn.Module] = []
    channels = 3
    for item in VGG16_LAYOUT:
        if item == "M":
            layers.append(nn.MaxPool2d(2, 2))
        else:
            layers += [nn.Conv2d(channels, item, 3, padding=1), nn.ReLU(inplace=False)]
            channels = item
    return nn.Sequential(*layers)


class _Linear(nn.Module):
    """LPIPS's 1x1 channel weighting; `model.1` naming keeps the published checkpoints loadable."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.model = nn.Sequential(nn.Identity(), nn.Conv2d(channels, 1, 1, bias=False))


class LPIPS(nn.Module):
    """Learned perceptual distance between images in [0, 1]; all weights frozen."""

    def __init__(self) -> None:
        super().__init__()
        self.features = vgg16_features()
        for k, width in enumerate((64, 128, 256, 512, 512)):
            setattr(self, f"lin{k}", _Linear(width))
        self.register_buffer("shift", torch.tensor(LPIPS_SHIFT).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("scale", torch.tensor(LPIPS_SCALE).view(1, 3, 1, 1), persistent=False)
        self.requires_grad_(False)

    def _taps(self, image: torch.Tensor) -> list[torch.Tensor]:
        x = ((image * 2 - 1) - self.shift) / self.scale
        taps = []
        for index, layer in enumerate(self.features):
            x = layer(x)
            if index in LPIPS_TAPS:
                taps.append(x / (x.pow(2).sum(dim=1, keepdim=True).sqrt() + 1e-10))
            if index == LPIPS_TAPS[-1]:
                break
        return taps

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        total = x.new_zeros(())
        for k, (a, b) in enumerate(zip(self._taps(x), self._taps(y))):
            total = total + getattr(self, f"lin{k}").model((a - b).pow(2)).mean()
        return total


class LaplacianPyramidL1(nn.Module):
    """Fallback perceptual term: mean L1 over the bands of a Laplacian pyramid."""

    def __init__(self, levels: int = 5) -> None:
        super().__init__()
        self.levels = levels

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        total = x.new_zeros(())
        for _ in range(self.levels):
            if min(x.shape[-2:]) < 2:
                break
            x_low, y_low = F.avg_pool2d(x, 2), F.avg_pool2d(y, 2)
            x_band = x - F.interpolate(x_low, size=x.shape[-2:], mode="bilinear", align_corners=False)
            y_band = y - F.interpolate(y_low, size=y.shape[-2:], mode="bilinear", align_corners=False)
            total = total + (x_band - y_band).abs().mean()
            x, y = x_low, y_low
        return total + (x - y).abs().mean()


def load_local_weights(module: nn.Module, weights: str, what: str) -> nn.Module:
    """Fill `module` from a local safetensors file, every tensor accounted for; a mismatch names the file."""
    path = Path(weights)
    if not path.is_file():
        raise BadInput(f"{what} weights file {path} does not exist")
    missing, unexpected = module.load_state_dict(load_file(str(path)), strict=False)
    if missing or unexpected:
        raise BadInput(
            f"{path} is not a weights file for {what}: missing {len(missing)} tensors "
            f"(e.g. {missing[:2]}), unexpected {len(unexpected)} (e.g. {unexpected[:2]})"
        )
    return module.eval()


def build_perceptual(weights: Optional[str]) -> tuple[nn.Module, str]:
    """LPIPS from `weights` when given, else the Laplacian fallback; returns (loss module, what it is).

    The description starts with "fallback" exactly when the Laplacian pyramid stands in for LPIPS.
    """
    if not weights:
        return LaplacianPyramidL1(), "fallback Laplacian-pyramid L1 (no lpips_weights given)"
    return load_local_weights(LPIPS(), weights, "LPIPS-VGG16"), f"LPIPS-VGG16 from {weights}"
