"""The TAESD-style tiny encoder and decoder, minus their 4-channel latent convs.

The layer indices follow TAESD (and diffusers' `AutoencoderTiny`), so TAESD weights
map onto these modules by name: the encoder keeps layers 0-13 (its last conv, 64->4,
is replaced by the UNet's fused input conv) and the decoder keeps layers 1-18 (its
first conv, 4->64, is replaced by the UNet's fused output conv). TAESD's layers work
on images in [0, 1]: diffusers' [-1, 1] wrapper maps to [0, 1] before its encoder
layers and back after its decoder layers, so the student feeds [0, 1] directly.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

BLOCKS_PER_STAGE = (1, 3, 3, 3)
"""TAESD's blocks at full size and after each of its three 2x resamplings."""


BRANCH_INIT_GAIN = 0.1
"""Scale of a TinyBlock's last conv at initialisation: each block starts close to the identity."""


def conv3x3(in_channels: int, out_channels: int, stride: int = 1, bias: bool = True, gain: float = 1.0) -> nn.Conv2d:
    """A 3x3 convolution that keeps the size (or halves it with stride 2), He-initialised.

    Trained from scratch (no TAESD weights here), PyTorch's default init shrinks
    the signal about 1.7x per conv: the decoder's HR-size features started near
    0.02, below Adam's step size, and the biases of the last HR block drifted
    until its ReLUs died (the first shipped weights added an output of std 3e-4
    to bicubic). He init for convs that read ReLU outputs keeps the features
    near unit scale. Loaded weights replace this init.
    """
    conv = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=bias)
    he_initialise(conv, gain)
    return conv


def he_initialise(conv: nn.Conv2d, gain: float = 1.0) -> None:
    """Kaiming-normal weights for a ReLU network (times `gain`) and zero bias."""
    nn.init.kaiming_normal_(conv.weight, nonlinearity="relu")
    with torch.no_grad():
        conv.weight.mul_(gain)
    if conv.bias is not None:
        nn.init.zeros_(conv.bias)


class NearestUpsampleConv(nn.Conv2d):
    """2x nearest upsampling followed by this 3x3 conv, computed as four 2x2 convs on the small grid.

    Equal to `conv(interpolate(x, scale_factor=2, mode="nearest"))` (zero padding), but
    each output phase (even/odd row x even/odd column) sees only two input rows and
    columns, whose 3x3 taps sum to a 2x2 kernel: 16 instead of 36 multiply-adds per
    input pixel, and no upsampled copy of the input. The parameters are the 3x3 conv's,
    so weights map as for the plain layer.
    """

    def __init__(self, in_channels: int, out_channels: int, bias: bool = True):
        super().__init__(in_channels, out_channels, 3, padding=1, bias=bias)
        he_initialise(self)

    @staticmethod
    def _fold(weight: torch.Tensor, dim: int, phase: int) -> torch.Tensor:
        """Sum the 3 taps along `dim` into the 2 input positions one output phase sees."""
        first, middle, last = weight.unbind(dim)
        pair = (first, middle + last) if phase == 0 else (first + middle, last)
        return torch.stack(pair, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, _, height, width = x.shape
        padded = F.pad(x, (1, 1, 1, 1))
        phases = {}
        for row in (0, 1):
            rows = self._fold(self.weight, 2, row)
            for col in (0, 1):
                kernel = self._fold(rows, 3, col)
                phases[row, col] = F.conv2d(padded[:, :, row:row + height + 1, col:col + width + 1], kernel, self.bias)
        layout = torch.channels_last if x.is_contiguous(memory_format=torch.channels_last) else torch.contiguous_format
        first = phases[0, 0]
        out = torch.empty(
            (batch, self.out_channels, 2 * height, 2 * width), dtype=first.dtype, device=first.device, memory_format=layout
        )
        for (row, col), phase in phases.items():
            out[:, :, row::2, col::2] = phase
        return out


class TinyBlock(nn.Module):
    """TAESD's residual block: three 3x3 convs with ReLUs, added to the input, then ReLU."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Sequential(
            conv3x3(channels, channels), nn.ReLU(inplace=True),
            conv3x3(channels, channels), nn.ReLU(inplace=True),
            conv3x3(channels, channels, gain=BRANCH_INIT_GAIN),
        )
        self.fuse = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # In place: at HR size every 64-channel copy is large, and none of these is needed for backward.
        return self.fuse(self.conv(x).add_(x))


class TinyEncoder(nn.Module):
    """Image [0, 1] -> 64-channel features on the latent grid.

    `strides` gives the stride of TAESD's three resampling convs: (2, 2, 2) reads an
    HR image (HR / 8); the LR layout sets the first ones to 1 so that an LR image
    reaches the same grid (e.g. (1, 1, 2) at x4: LR / 2 == HR / 8).
    """

    def __init__(self, channels: int, strides: tuple[int, int, int] = (2, 2, 2)):
        super().__init__()
        layers: "OrderedDict[str, nn.Module]" = OrderedDict()
        for stage, blocks in enumerate(BLOCKS_PER_STAGE):
            if stage == 0:
                layers[str(len(layers))] = conv3x3(3, channels)
            else:
                layers[str(len(layers))] = conv3x3(channels, channels, stride=strides[stage - 1], bias=False)
            for _ in range(blocks):
                layers[str(len(layers))] = TinyBlock(channels)
        self.layers = nn.Sequential(layers)
        self.channels = channels

    def forward(self, image01: torch.Tensor) -> torch.Tensor:
        return self.layers(image01)

    def forward_with_input_grid(self, image01: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The latent features and the last features still on the input's grid (before the first strided conv)."""
        on_input_grid = None
        x = image01
        for layer in self.layers:
            if on_input_grid is None and isinstance(layer, nn.Conv2d) and layer.stride[0] > 1:
                on_input_grid = x
            x = layer(x)
        return x, x if on_input_grid is None else on_input_grid


class TinyDecoder(nn.Module):
    """64-channel features on the latent grid -> image, x8 larger, roughly in [0, 1].

    Nothing clamps the output: the loss needs gradients beyond [0, 1] and the engine
    clips when it writes.
    """

    def __init__(self, channels: int):
        super().__init__()
        layers: "OrderedDict[str, nn.Module]" = OrderedDict()
        index = 1  # TAESD's layer 0, the 4->64 conv, is the UNet's fused output conv now
        layers[str(index)] = nn.ReLU(inplace=True)
        stages = tuple(reversed(BLOCKS_PER_STAGE))
        for stage, blocks in enumerate(stages):
            for _ in range(blocks):
                index += 1
                layers[str(index)] = TinyBlock(channels)
            final = stage == len(stages) - 1
            if final:
                index += 1
                layers[str(index)] = conv3x3(channels, 3)
            else:
                index += 2  # TAESD's layer pair (nn.Upsample, conv) is one NearestUpsampleConv here
                layers[str(index)] = NearestUpsampleConv(channels, channels, bias=False)
        self.layers = nn.Sequential(layers)
        self.channels = channels

    def forward(self, features: torch.Tensor, skip: Optional[torch.Tensor] = None, skip_after: int = 0) -> torch.Tensor:
        """Decode; `skip` (same width) is added once `skip_after` of the three 2x upsamplings have run.

        Without gradients the output-size tail (last upsampling, last block, output conv) runs in
        horizontal stripes once its features would exceed TAIL_STRIPE_ELEMENTS (`decode_tail`).
        """
        upsamplings = 0
        x = features
        tail = self._tail_start()
        for index, layer in enumerate(self.layers):
            if skip is not None and upsamplings == skip_after:
                x, skip = x + skip, None
            if index == tail and skip is None and not torch.is_grad_enabled():
                return decode_tail(self.layers[tail:], x)
            x = layer(x)
            upsamplings += isinstance(layer, NearestUpsampleConv)
        return x

    def _tail_start(self) -> int:
        """Index of the last upsampling layer: from there on every feature map has the output's size."""
        return max(i for i, layer in enumerate(self.layers) if isinstance(layer, NearestUpsampleConv))


TAIL_STRIPE_ELEMENTS = 2**22
"""Largest output-size feature map (elements) the decoder's tail computes at once: 16 MiB in fp32. The
tail's maps are the largest a forward holds (at x4 each is 16x the LR tile times the decoder's width),
so striping it lets a tile of a given side run in far less memory. Stripes this small were measured no
slower than one pass (2.03 s against 2.22 s for a 308² tile on this CPU: they stay in cache)."""

TAIL_HALO_ROWS = 3
"""Input rows each stripe of the tail reads beyond its own on either side: the last upsampling reaches one
input row, and its four 3x3 convs at output size two more (four output rows)."""


def decode_tail(tail: nn.Sequential, x: torch.Tensor) -> torch.Tensor:
    """Run the decoder's output-size tail over `x` [B, C, h, w] in horizontal stripes of input rows.

    Each stripe reads TAIL_HALO_ROWS rows beyond its own on either side and keeps only the output rows of
    its own input rows, which see exactly what they see in one pass (zero padding only where the whole
    map ends), so the result equals one pass up to float rounding. One pass when the map is small.
    """
    batch, channels, height, width = x.shape
    per_input_row = batch * channels * 4 * width  # 2x2 output pixels per input pixel
    rows = max(1, TAIL_STRIPE_ELEMENTS // per_input_row - 2 * TAIL_HALO_ROWS)
    if rows >= height:
        return tail(x)
    stripes = -(-height // rows)
    rows = -(-height // stripes)  # equal stripes: the last one is not a sliver that costs a whole halo
    outputs = []
    for top in range(0, height, rows):
        bottom = min(top + rows, height)
        first, last = max(0, top - TAIL_HALO_ROWS), min(height, bottom + TAIL_HALO_ROWS)
        out = tail(x[:, :, first:last])
        outputs.append(out[:, :, 2 * (top - first): 2 * (bottom - first)])
    return torch.cat(outputs, dim=2)
