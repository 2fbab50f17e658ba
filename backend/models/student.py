"""The SlimDiffSR student: LR in [0, 1] -> encoder -> pruned UNet -> decoder -> HR in [0, 1].

Single step, no timestep, no text. The model owns its padding (reflect, to the
multiple its strides need, cropped back after) and, in the paper's "hr" layout, its
bicubic upsampling of the LR to HR size before the encoder.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from .config import LATENT_FACTOR, StudentConfig
from .unet import PrunedUNet
from .vae import TinyDecoder, TinyEncoder


def encoder_strides(config: StudentConfig) -> tuple[int, int, int]:
    """Strides of the encoder's three resampling convs for the config's layout and scale.

    "hr": (2, 2, 2), HR / 8. "lr": only the last log2(8 / scale) stay 2, so the LR
    lands on the same latent grid; the early, cheap-to-skip stages run at LR size.
    """
    if config.encoder == "hr":
        return (2, 2, 2)
    halvings = int(math.log2(LATENT_FACTOR // config.scale))
    return tuple([1] * (3 - halvings) + [2] * halvings)  # type: ignore[return-value]


def pad_to_multiple(image: torch.Tensor, multiple: int) -> torch.Tensor:
    """Pads bottom/right to a multiple of `multiple`; reflect where the image is large enough, else replicate."""
    height, width = image.shape[-2:]
    pad_h = -height % multiple
    pad_w = -width % multiple
    if pad_h == 0 and pad_w == 0:
        return image
    mode = "reflect" if pad_h < height and pad_w < width else "replicate"
    return F.pad(image, (0, pad_w, 0, pad_h), mode=mode)


class SlimDiffSR(nn.Module):
    """The student network; see the module docstring for the data flow."""

    def __init__(self, config: StudentConfig):
        super().__init__()
        self.config = config
        self.scale = config.scale
        self.meta: dict[str, str] = {}
        strides = encoder_strides(config)
        self.encoder = TinyEncoder(config.vae_channels, strides)
        self.encoder_halvings = sum(stride > 1 for stride in strides)
        """How many 2x upsamplings the decoder runs before it is back on the encoder's input grid."""
        self.unet = PrunedUNet(config)
        self.decoder = TinyDecoder(config.vae_channels)
        if config.residual:
            last = self.decoder.layers[-1]
            nn.init.zeros_(last.weight)
            nn.init.zeros_(last.bias)

    def forward(self, lr: torch.Tensor) -> torch.Tensor:
        """LR [B, 3, h, w] in [0, 1] -> HR [B, 3, h*s, w*s], roughly in [0, 1] (not clamped)."""
        return self._run(lr, None)

    def forward_features(self, lr: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """HR output plus the UNet block outputs named by `feature_channels`, for distillation."""
        taps: dict[str, torch.Tensor] = {}
        return self._run(lr, taps), taps

    def _run(self, lr: torch.Tensor, taps: Optional[dict[str, torch.Tensor]]) -> torch.Tensor:
        height, width = lr.shape[-2:]
        image = pad_to_multiple(lr, self.config.lr_multiple)
        upsampled = None
        if self.config.encoder == "hr" or self.config.residual:
            upsampled = F.interpolate(image, scale_factor=float(self.scale), mode="bicubic", align_corners=False)
        encoder_input = upsampled if self.config.encoder == "hr" else image
        # Channels-last all the way: oneDNN's depthwise and HR-size convs run far faster on
        # NHWC than on NCHW, and the attention blocks' NCHW <-> token reshapes become views.
        encoder_input = encoder_input.contiguous(memory_format=torch.channels_last)
        if self.config.lr_skip:
            latent, on_lr_grid = self.encoder.forward_with_input_grid(encoder_input)
        else:
            latent, on_lr_grid = self.encoder(encoder_input), None
        hr = self.decoder(self.unet(latent, taps), skip=on_lr_grid, skip_after=self.encoder_halvings)
        if self.config.residual:
            hr = hr + upsampled
        return hr[..., : height * self.scale, : width * self.scale].contiguous()


def build(config: StudentConfig) -> SlimDiffSR:
    """A freshly initialised student for `config` (train mode, float32, on the default device)."""
    return SlimDiffSR(config)


def teacher_parameter_name(name: str, config: StudentConfig, teacher_levels: int = 4) -> Optional[str]:
    """The SD UNet state-dict key a student "unet." parameter was pruned from, or None outside the UNet.

    For initialising the student from the teacher: a key maps where the teacher has
    it with the same shape (FSC, DSC, QGAM and the fused convs have no counterpart).
    The student's up_blocks.k is the teacher's up_blocks.(k + removed levels), and
    its mid_block is the first ResBlock of the teacher's first removed level. The
    VAE parts need no mapping: "encoder.layers.*" / "decoder.layers.*" are
    diffusers' AutoencoderTiny (TAESD) keys as they are.
    """
    if not name.startswith("unet."):
        return None
    key = name[len("unet."):]
    levels = len(config.block_channels)
    if key.startswith("mid_block."):
        return f"down_blocks.{levels}.resnets.0.{key[len('mid_block.'):]}"
    if key.startswith("up_blocks."):
        index, rest = key[len("up_blocks."):].split(".", 1)
        return f"up_blocks.{int(index) + teacher_levels - levels}.{rest}"
    return key


def feature_channels(config: StudentConfig) -> dict[str, int]:
    """Tap name -> channels of `forward_features`' taps, without building the model.

    "down{i}": output of down level i (after its downsampler, if it has one);
    "mid": the ResBlock replacing the deep levels; "up{i}": output of up level i
    (after its upsampler, if it has one). Deepest levels first for the up path.
    """
    widths = config.block_channels
    channels = {f"down{level}": width for level, width in enumerate(widths)}
    channels["mid"] = config.mid_channels
    for level in reversed(range(len(widths))):
        channels[f"up{level}"] = widths[level]
    return channels
