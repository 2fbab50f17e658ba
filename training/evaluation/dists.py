"""DISTS (Ding et al. 2020), a full-reference image quality metric, from a local weights file.

DISTS compares the mean (texture) and correlation (structure) of VGG16
feature maps, with max-pooling replaced by L2 pooling, and weighs them with
learned per-channel alpha and beta. Give one safetensors file with
torchvision's `vgg16().features` tensors (`features.<i>.*`) plus the DISTS
`alpha` and `beta` tensors ([1, 1475, 1, 1] each, from the DISTS_pytorch
release). Lower is better; 0 for identical images.
"""

from __future__ import annotations


import torch
import torch.nn.functional as F
from torch import nn


from training.losses.adversarial import IMAGENET_MEAN, IMAGENET_STD
from training.losses.perceptual import load_local_weights, vgg16_features

STAGE_ENDS = (3, 8, 15, 22, 29)  # relu1_2, relu2_2, relu3_3, relu4_3, relu5_3
CHANNELS = (3, 64, 128, 256, 512, 512)
STABILITY = 1e-6


class L2Pool(nn.Module):
    """Stride-2 pooling by the root of a Hann-weighted mean of squares (less aliasing than max-pooling)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        window = torch.hann_window(5, periodic=False)[1:-1]
        kernel = torch.outer(window, window)
        self.register_buffer("kernel", (kernel / kernel.sum()).expand(channels, 1, 3, 3).clone(), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (F.conv2d(x.pow(2), self.kernel, stride=2, padding=1, groups=x.shape[1]) + 1e-12).sqrt()


class DISTS(nn.Module):
    """DISTS distance between [B, 3, H, W] images in [0, 1]; returns the batch mean."""

    def __init__(self) -> None:
        super().__init__()
        self.features = vgg16_features()
        self.pools = nn.ModuleDict({str(i): L2Pool(c) for i, c in zip(STAGE_ENDS[:-1], CHANNELS[1:-1])})
        self.alpha = nn.Parameter(torch.zeros(1, sum(CHANNELS), 1, 1))
        self.beta = nn.Parameter(torch.zeros(1, sum(CHANNELS), 1, 1))
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self.requires_grad_(False)

    def _stages(self, image: torch.Tensor) -> list[torch.Tensor]:
        x = (image - self.mean) / self.std
        stages = [image]
        for index, layer in enumerate(self.features):
            if isinstance(layer, nn.MaxPool2d):
                x = self.pools[str(index - 1)](x)
                continue
            x = layer(x)
            if index in STAGE_ENDS:
                stages.append(x)
            if index == STAGE_ENDS[-1]:
                break
        return stages

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        total = self.alpha.sum() + self.beta.sum()
        alphas = torch.split(self.alpha / total, CHANNELS, dim=1)
        betas = torch.split(self.beta / total, CHANNELS, dim=1)
        texture = structure = x.new_zeros(x.shape[0])
        for a, b, fx, fy in zip(alphas, betas, self._stages(x), self._stages(y)):
            mx, my = fx.mean(dim=(2, 3), keepdim=True), fy.mean(dim=(2, 3), keepdim=True)
            luminance = (2 * mx * my + STABILITY) / (mx.pow(2) + my.pow(2) + STABILITY)
            vx = (fx - mx).pow(2).mean(dim=(2, 3), keepdim=True)
            vy = (fy - my).pow(2).mean(dim=(2, 3), keepdim=True)
            cov = ((fx - mx) * (fy - my)).mean(dim=(2, 3), keepdim=True)
            correlation = (2 * cov + STABILITY) / (vx + vy + STABILITY)
            texture = texture + (a * luminance).sum(dim=(1, 2, 3))
            structure = structure + (b * correlation).sum(dim=(1, 2, 3))
        return (1 - (texture + structure)).mean()


def load_dists(weights: str) -> DISTS:
    """DISTS with VGG16 and alpha/beta from one safetensors file."""
    return load_local_weights(DISTS(), weights, "DISTS")
