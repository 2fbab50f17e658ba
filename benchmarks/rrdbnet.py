"""RRDBNet at Real-ESRGAN x4plus dimensions (23 RRDBs, 64 features, 32 growth): the speed reference.

Written here from the ESRGAN paper's description; random weights are enough to time it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class DenseBlock(nn.Module):
    """Five 3x3 convs, each seeing the block input and all earlier outputs; scaled residual."""

    def __init__(self, features: int = 64, growth: int = 32):
        super().__init__()
        self.convs = nn.ModuleList(
            [nn.Conv2d(features + i * growth, growth if i < 4 else features, 3, padding=1) for i in range(5)]
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outputs = [x]
        for index, conv in enumerate(self.convs):
            out = conv(torch.cat(outputs, dim=1))
            if index < 4:
                out = F.leaky_relu(out, 0.2)
            outputs.append(out)
        return x + 0.2 * outputs[-1]


class RRDB(nn.Module):
    """Residual-in-residual dense block: three dense blocks, scaled residual."""

    def __init__(self, features: int = 64, growth: int = 32):
        super().__init__()
        self.blocks = nn.Sequential(*(DenseBlock(features, growth) for _ in range(3)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + 0.2 * self.blocks(x)


class RRDBNet(nn.Module):
    """x4 RRDBNet: conv, 23 RRDBs, conv + long skip, two nearest-2x + conv stages, two output convs."""

    def __init__(self, blocks: int = 23, features: int = 64, growth: int = 32):
        super().__init__()
        self.scale = 4
        self.conv_first = nn.Conv2d(3, features, 3, padding=1)
        self.body = nn.Sequential(*(RRDB(features, growth) for _ in range(blocks)))
        self.conv_body = nn.Conv2d(features, features, 3, padding=1)
        self.conv_up1 = nn.Conv2d(features, features, 3, padding=1)
        self.conv_up2 = nn.Conv2d(features, features, 3, padding=1)
        self.conv_hr = nn.Conv2d(features, features, 3, padding=1)
        self.conv_last = nn.Conv2d(features, 3, 3, padding=1)

    def forward(self, lr: torch.Tensor) -> torch.Tensor:
        features = self.conv_first(lr)
        features = features + self.conv_body(self.body(features))
        features = F.leaky_relu(self.conv_up1(F.interpolate(features, scale_factor=2.0, mode="nearest")), 0.2)
        features = F.leaky_relu(self.conv_up2(F.interpolate(features, scale_factor=2.0, mode="nearest")), 0.2)
        return self.conv_last(F.leaky_relu(self.conv_hr(features), 0.2))
