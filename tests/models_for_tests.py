"""Deterministic SR models with known behaviour, for engine tests (not shipped)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class NearestUpscaler(nn.Module):
    """Identity up to nearest-neighbour upscaling: output pixels repeat input pixels exactly."""

    def __init__(self, scale: int = 4, gain: float = 1.0):
        super().__init__()
        self.scale = scale
        self.gain = gain

    def forward(self, lr: torch.Tensor) -> torch.Tensor:
        return F.interpolate(lr * self.gain, scale_factor=self.scale, mode="nearest")


class LocalConvModel(nn.Module):
    """Three 3x3 convs at LR (receptive radius 3 px) then nearest upscaling; fixed random weights."""

    def __init__(self, scale: int = 4, seed: int = 0):
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        self.scale = scale
        self.convs = nn.ModuleList(nn.Conv2d(3, 3, 3, padding=1) for _ in range(3))
        with torch.no_grad():
            for conv in self.convs:
                conv.weight.copy_(torch.randn(conv.weight.shape, generator=generator) * 0.3)
                conv.bias.copy_(torch.randn(conv.bias.shape, generator=generator) * 0.1)

    def forward(self, lr: torch.Tensor) -> torch.Tensor:
        x = lr
        for conv in self.convs:
            x = torch.tanh(conv(x)) + x
        return F.interpolate(x, scale_factor=self.scale, mode="nearest")


class WindowNormalisedUpscaler(nn.Module):
    """GroupNorm over all channels, then nearest upscaling: its output depends on the whole input's statistics."""

    def __init__(self, scale: int = 4):
        super().__init__()
        self.scale = scale
        self.norm = nn.GroupNorm(1, 3)
        with torch.no_grad():
            self.norm.weight.copy_(torch.tensor([0.1, 0.2, 0.3]))
            self.norm.bias.fill_(0.5)

    def forward(self, lr: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.interpolate(self.norm(lr), scale_factor=self.scale, mode="nearest")
