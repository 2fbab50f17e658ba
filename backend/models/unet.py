"""The pruned SD-2.1 UNet: retained levels with FSC/DSC ResBlocks and QGAM blocks, no time, no text.

Module names follow diffusers' `UNet2DConditionModel` where a module is retained, so
teacher weights map by name and shape: `down_blocks.{i}.resnets.{j}.norm1`,
`down_blocks.{i}.attentions.{j}.proj_in`, `...transformer_blocks.0.ff.net.0.proj`,
`down_blocks.{i}.downsamplers.0.conv`, `up_blocks.{k}.upsamplers.0.conv`,
`conv_norm_out`. Two index shifts: the student's `up_blocks.{k}` is the teacher's
`up_blocks.{k + removed levels}`, and `mid_block` is the first ResBlock of the
teacher's first removed level (`down_blocks.{levels}.resnets.0`), which is why it is
as wide as that level. `conv_in` / `conv_out` are the fused convs (64 -> C0 and
C0 -> 64) that replace the VAE's and UNet's 4-channel convs; they have no teacher.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from .config import StudentConfig
from .operators import DirectionSeparableConv, FrequencySeparableConv, QueryGlobalAggregation, SelfAttention
from .vae import NearestUpsampleConv, conv3x3

NORM_EPS = 1e-5  # SD-2.1's resnet_eps
ATTENTION_NORM_EPS = 1e-6  # SD's Transformer2DModel GroupNorm


class ResBlock(nn.Module):
    """SD's ResnetBlock2D without the time embedding: norm, SiLU, conv1, norm, SiLU, conv2, + shortcut.

    conv1 is an FSC and conv2 a DSC in the student; plain 3x3 convs in the ablations.
    """

    def __init__(self, in_channels: int, out_channels: int, config: StudentConfig):
        super().__init__()
        self.norm1 = nn.GroupNorm(config.norm_groups, in_channels, eps=NORM_EPS)
        if config.conv1 == "fsc":
            self.conv1 = FrequencySeparableConv(in_channels, out_channels, config.bottleneck_ratio)
        else:
            self.conv1 = conv3x3(in_channels, out_channels)
        self.norm2 = nn.GroupNorm(config.norm_groups, out_channels, eps=NORM_EPS)
        if config.conv2 == "dsc":
            self.conv2 = DirectionSeparableConv(out_channels, out_channels, config.bottleneck_ratio, config.dsc_kernel)
        else:
            self.conv2 = conv3x3(out_channels, out_channels)
        self.conv_shortcut = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        shortcut = x if self.conv_shortcut is None else self.conv_shortcut(x)
        return shortcut + h


class GEGLU(nn.Module):
    """Gated GELU projection of SD's feed-forward: one linear, half gates the other half."""

    def __init__(self, dim_in: int, dim_out: int):
        super().__init__()
        self.proj = nn.Linear(dim_in, dim_out * 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden, gate = self.proj(x).chunk(2, dim=-1)
        return hidden * F.gelu(gate)


class FeedForward(nn.Module):
    """SD's feed-forward (GEGLU, then a linear back), indexed as diffusers' `ff.net.0` / `ff.net.2`."""

    def __init__(self, channels: int, mult: int):
        super().__init__()
        inner = channels * mult
        self.net = nn.Sequential(GEGLU(channels, inner), nn.Dropout(0.0), nn.Linear(inner, channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class TransformerBlock(nn.Module):
    """SD's BasicTransformerBlock with the text cross-attention removed and attn1 made QGAM."""

    def __init__(self, channels: int, config: StudentConfig):
        super().__init__()
        self.norm1 = nn.LayerNorm(channels)
        if config.attention == "qgam":
            self.attn1 = QueryGlobalAggregation(channels, config.qgam_queries, config.qgam_dim)
        else:
            self.attn1 = SelfAttention(channels, config.attention_head_dim)
        self.norm3 = nn.LayerNorm(channels)
        self.ff = FeedForward(channels, config.ff_mult)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        tokens = tokens + self.attn1(self.norm1(tokens))
        return tokens + self.ff(self.norm3(tokens))


class AttentionBlock(nn.Module):
    """SD's Transformer2DModel (linear projection): feature map -> tokens -> block -> feature map, + input."""

    def __init__(self, channels: int, config: StudentConfig):
        super().__init__()
        self.norm = nn.GroupNorm(config.norm_groups, channels, eps=ATTENTION_NORM_EPS)
        self.proj_in = nn.Linear(channels, channels)
        self.transformer_blocks = nn.ModuleList([TransformerBlock(channels, config)])
        self.proj_out = nn.Linear(channels, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, channels, height, width = x.shape
        tokens = self.norm(x).permute(0, 2, 3, 1).reshape(batch, height * width, channels)
        tokens = self.proj_in(tokens)
        for block in self.transformer_blocks:
            tokens = block(tokens)
        tokens = self.proj_out(tokens)
        return x + tokens.reshape(batch, height, width, channels).permute(0, 3, 1, 2)


class Downsample(nn.Module):
    """Stride-2 3x3 conv (diffusers' Downsample2D)."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = conv3x3(channels, channels, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class Upsample(nn.Module):
    """Nearest 2x then 3x3 conv (diffusers' Upsample2D), computed on the small grid."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = NearestUpsampleConv(channels, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class DownBlock(nn.Module):
    """One retained down level: (ResBlock, attention) pairs, then a downsampler unless it is the last."""

    def __init__(self, in_channels: int, out_channels: int, config: StudentConfig, downsample: bool):
        super().__init__()
        layers = config.layers_per_block
        self.resnets = nn.ModuleList(
            [ResBlock(in_channels if i == 0 else out_channels, out_channels, config) for i in range(layers)]
        )
        self.attentions = nn.ModuleList([AttentionBlock(out_channels, config) for _ in range(layers)])
        self.downsamplers = nn.ModuleList([Downsample(out_channels)]) if downsample else None

    def forward(self, x: torch.Tensor, skips: list[torch.Tensor]) -> torch.Tensor:
        for resnet, attention in zip(self.resnets, self.attentions):
            x = attention(resnet(x))
            skips.append(x)
        if self.downsamplers is not None:
            x = self.downsamplers[0](x)
            skips.append(x)
        return x


class UpBlock(nn.Module):
    """One retained up level: (ResBlock on [x, skip], attention) triples, then an upsampler unless last."""

    def __init__(self, in_channels: int, out_channels: int, skip_channels: list[int], config: StudentConfig, upsample: bool):
        super().__init__()
        widths = [in_channels] + [out_channels] * (len(skip_channels) - 1)
        self.resnets = nn.ModuleList(
            [ResBlock(width + skip, out_channels, config) for width, skip in zip(widths, skip_channels)]
        )
        self.attentions = nn.ModuleList([AttentionBlock(out_channels, config) for _ in skip_channels])
        self.upsamplers = nn.ModuleList([Upsample(out_channels)]) if upsample else None

    def forward(self, x: torch.Tensor, skips: list[torch.Tensor]) -> torch.Tensor:
        for resnet, attention in zip(self.resnets, self.attentions):
            x = attention(resnet(torch.cat([x, skips.pop()], dim=1)))
        if self.upsamplers is not None:
            x = self.upsamplers[0](x)
        return x


class PrunedUNet(nn.Module):
    """64-channel latent features -> 64-channel latent features through the retained UNet levels.

    The mid block is one ResBlock at the deepest retained resolution; the deepest
    retained level has no downsampler, so every skip keeps SD's pairing with its up
    block (the structure SD has at its own deepest level).
    """

    def __init__(self, config: StudentConfig):
        super().__init__()
        widths = config.block_channels
        levels = len(widths)
        self.conv_in = conv3x3(config.vae_channels, widths[0])
        self.down_blocks = nn.ModuleList()
        skip_channels = [widths[0]]
        previous = widths[0]
        for level, width in enumerate(widths):
            last = level == levels - 1
            self.down_blocks.append(DownBlock(previous, width, config, downsample=not last))
            skip_channels += [width] * config.layers_per_block + ([] if last else [width])
            previous = width
        self.mid_block = ResBlock(widths[-1], config.mid_channels, config)
        self.up_blocks = nn.ModuleList()
        previous = config.mid_channels
        for level in reversed(range(levels)):
            skips = [skip_channels.pop() for _ in range(config.layers_per_block + 1)]
            self.up_blocks.append(UpBlock(previous, widths[level], skips, config, upsample=level > 0))
            previous = widths[level]
        self.conv_norm_out = nn.GroupNorm(config.norm_groups, widths[0], eps=NORM_EPS)
        self.conv_out = conv3x3(widths[0], config.vae_channels)

    def forward(self, features: torch.Tensor, taps: Optional[dict[str, torch.Tensor]] = None) -> torch.Tensor:
        """Runs the UNet; if `taps` is a dict, fills it with each block's output (see `tap_names`)."""
        x = self.conv_in(features)
        skips = [x]
        for level, block in enumerate(self.down_blocks):
            x = block(x, skips)
            if taps is not None:
                taps[f"down{level}"] = x
        x = self.mid_block(x)
        if taps is not None:
            taps["mid"] = x
        for position, block in enumerate(self.up_blocks):
            x = block(x, skips)
            if taps is not None:
                taps[f"up{len(self.up_blocks) - 1 - position}"] = x
        return self.conv_out(F.silu(self.conv_norm_out(x)))
