"""The classical bicubic baseline: what the student must beat; never the default model."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class BicubicUpscaler(nn.Module):
    """Bicubic interpolation with the SR model interface: [B,3,h,w] -> [B,3,h*s,w*s]."""

    label = "bicubic (classical baseline, not super-resolution)"

    def __init__(self, scale: int):
        super().__init__()
        self.scale = scale
        self.meta: dict[str, str] = {}

    def forward(self, lr: torch.Tensor) -> torch.Tensor:
        return F.interpolate(lr, scale_factor=self.scale, mode="bicubic", align_corners=False)
