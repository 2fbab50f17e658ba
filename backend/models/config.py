"""The student's configuration: every width and switch the network is built from.

A weights file stores this config as JSON in its safetensors metadata, so the
file alone says which network it belongs to (`build(StudentConfig.from_dict(...))`).
"""

from __future__ import annotations

import dataclasses
import reprlib
from dataclasses import dataclass
from typing import Any

ENCODER_LAYOUTS = ("hr", "lr")
CONV1_KINDS = ("fsc", "conv3x3")
CONV2_KINDS = ("dsc", "conv3x3")
ATTENTION_KINDS = ("qgam", "self")
INT_FIELDS = (
    "scale", "vae_channels", "mid_channels", "layers_per_block", "norm_groups", "ff_mult",
    "qgam_queries", "qgam_dim", "attention_head_dim", "dsc_kernel",
)
# What any real preset needs, with room to spare (the paper preset's values in parentheses):
# a weights file is untrusted input, and a config beyond these bounds is refused before a
# single tensor is allocated for it.
MAX_WIDTH = 4096  # vae_channels (64), block_channels (320, 640), mid_channels (1280), qgam_dim (64)
MAX_LEVELS = 6  # len(block_channels) (2)
BOUNDS = {
    "vae_channels": MAX_WIDTH,
    "mid_channels": MAX_WIDTH,
    "layers_per_block": 8,  # (2)
    "norm_groups": 512,  # (32)
    "ff_mult": 8,  # (4)
    "qgam_queries": 1024,  # (32)
    "qgam_dim": MAX_WIDTH,
    "attention_head_dim": MAX_WIDTH,  # (64)
    "dsc_kernel": 31,  # (3)
}
LATENT_FACTOR = 8
"""The tiny VAE maps HR pixels to a latent grid 8 times coarser, as TAESD does."""


@dataclass(frozen=True)
class StudentConfig:
    """Widths and switches of the SlimDiffSR student.

    scale:            output / input size (2, 4 or 8).
    encoder:          "hr" (the paper's layout: encode the bicubic-upsampled LR at HR
                      size) or "lr" (read the LR directly; the first strided convs of the
                      encoder keep stride 1, so it reaches the same latent grid, HR / 8,
                      with the same weights' shapes and far fewer pixels).
    vae_channels:     width of the TAESD-style encoder and decoder (64 in TAESD).
    block_channels:   widths of the retained UNet levels (SD-2.1: 320, 640).
    mid_channels:     width of the ResBlock that replaces the removed deep levels
                      (SD-2.1's third level, 1280, whose first ResBlock it is).
    layers_per_block: ResBlocks per down level (up levels have one more, as in SD).
    norm_groups:      GroupNorm groups (SD: 32).
    ff_mult:          feed-forward expansion of the attention blocks (SD: 4, GEGLU).
    qgam_queries, qgam_dim: QGAM's learnable queries (M) and its projection width.
    attention_head_dim: head width of the standard self-attention ablation (SD-2.1: 64).
    bottleneck_ratio: hidden width of FSC's and DSC's two 1x1 convs, as a fraction of
                      their input width.
    dsc_kernel:       length of DSC's 1xk / kx1 depthwise kernels.
    conv1, conv2, attention: operators of the ResBlocks' first and second conv and of
                      the attention blocks; "conv3x3" / "self" build the paper's
                      Table 6 ablations.
    residual:         add the bicubic upsampling of the LR to the decoder's output, so the
                      network learns only the detail bicubic misses (its last conv starts
                      at zero: an untrained model is exactly bicubic). Off in the paper,
                      whose decoder draws the whole image; on in the shipped `compact`
                      preset, which must beat classical resampling after a short CPU
                      training.
    lr_skip:          with the "lr" encoder, add the encoder's last LR-grid features to the
                      decoder where it reaches the LR grid again (a U-Net long skip; no
                      parameters). Not in the paper, whose TAESD sends everything through
                      the HR / 8 latent: at x4 that grid is LR / 2, and a CPU-trained student
                      must first learn to carry per-pixel detail through it; with the skip
                      the decoder sees it directly, as a plain LR-space CNN does.
    """

    scale: int
    encoder: str = "hr"
    vae_channels: int = 64
    block_channels: tuple[int, ...] = (320, 640)
    mid_channels: int = 1280
    layers_per_block: int = 2
    norm_groups: int = 32
    ff_mult: int = 4
    qgam_queries: int = 32
    qgam_dim: int = 64
    attention_head_dim: int = 64
    bottleneck_ratio: float = 0.25
    dsc_kernel: int = 3
    conv1: str = "fsc"
    conv2: str = "dsc"
    attention: str = "qgam"
    residual: bool = False
    lr_skip: bool = False

    def __post_init__(self) -> None:
        problems = list(self._problems())
        if problems:
            raise ValueError("; ".join(problems))
        object.__setattr__(self, "block_channels", tuple(self.block_channels))

    def _problems(self):
        # Types and bounds first, and stop there if they fail: the checks after them
        # divide by and compare these values.
        bad_types = list(self._type_problems())
        if bad_types:
            yield from bad_types
            return
        bad_bounds = list(self._bound_problems())
        if bad_bounds:
            yield from bad_bounds
            return
        if self.lr_skip and self.encoder != "lr":
            yield "lr_skip needs encoder 'lr' (the 'hr' encoder never sees the LR grid)"
        if self.scale not in (2, 4, 8):
            yield f"scale must be 2, 4 or 8, not {self.scale}"
        if self.encoder not in ENCODER_LAYOUTS:
            yield f"encoder must be one of {ENCODER_LAYOUTS}, not {self.encoder!r}"
        if self.conv1 not in CONV1_KINDS:
            yield f"conv1 must be one of {CONV1_KINDS}, not {self.conv1!r}"
        if self.conv2 not in CONV2_KINDS:
            yield f"conv2 must be one of {CONV2_KINDS}, not {self.conv2!r}"
        if self.attention not in ATTENTION_KINDS:
            yield f"attention must be one of {ATTENTION_KINDS}, not {self.attention!r}"
        for width in (*self.block_channels, self.mid_channels):
            if width % self.norm_groups:
                yield f"width {width} is not divisible by norm_groups {self.norm_groups}"
        for width in self.block_channels:
            if width % self.attention_head_dim:
                yield f"width {width} is not divisible by attention_head_dim {self.attention_head_dim}"
        if self.dsc_kernel % 2 == 0:
            yield f"dsc_kernel must be odd, not {self.dsc_kernel}"

    def _type_problems(self):
        for name in INT_FIELDS:
            value = getattr(self, name)
            if not _is_int(value):
                yield f"{name} must be an integer, not {reprlib.repr(value)}"
        channels = self.block_channels
        if not isinstance(channels, (list, tuple)) or not all(_is_int(width) for width in channels):
            yield f"block_channels must be a list of integers, not {reprlib.repr(channels)}"
        ratio = self.bottleneck_ratio
        if isinstance(ratio, bool) or not isinstance(ratio, (int, float)):
            yield f"bottleneck_ratio must be a number, not {reprlib.repr(ratio)}"
        for name in ("residual", "lr_skip"):
            if not isinstance(getattr(self, name), bool):
                yield f"{name} must be true or false, not {reprlib.repr(getattr(self, name))}"
        for name in ("encoder", "conv1", "conv2", "attention"):
            if not isinstance(getattr(self, name), str):
                yield f"{name} must be text, not {reprlib.repr(getattr(self, name))}"

    def _bound_problems(self):
        for name, largest in BOUNDS.items():
            value = getattr(self, name)
            if not 1 <= value <= largest:
                yield f"{name} {value} is outside 1..{largest} (no preset needs more)"
        if not 1 <= len(self.block_channels) <= MAX_LEVELS:
            yield f"block_channels has {len(self.block_channels)} levels; between 1 and {MAX_LEVELS} are allowed"
        for width in self.block_channels:
            if not 1 <= width <= MAX_WIDTH:
                yield f"block_channels width {width} is outside 1..{MAX_WIDTH} (no preset needs more)"
        if not 0 < self.bottleneck_ratio <= 1:
            yield f"bottleneck_ratio must be in (0, 1], not {self.bottleneck_ratio}"

    @classmethod
    def paper(cls, scale: int) -> "StudentConfig":
        """The paper's student: SD-2.1 widths 320/640, deep levels replaced by one ResBlock."""
        return cls(scale=scale)

    @classmethod
    def tiny(cls, scale: int) -> "StudentConfig":
        """The same structure at a few hundred thousand parameters, for tests on CPU."""
        return cls(
            scale=scale,
            vae_channels=16,
            block_channels=(32, 64),
            mid_channels=64,
            norm_groups=8,
            ff_mult=2,
            qgam_queries=4,
            qgam_dim=16,
            attention_head_dim=16,
        )

    @classmethod
    def compact(cls, scale: int) -> "StudentConfig":
        """The shipped default: the paper's structure at CPU-friendly widths, LR-reading
        encoder, LR-grid skip and a bicubic residual (a few MB of weights instead of 230 MB)."""
        return cls(
            scale=scale,
            encoder="lr",
            residual=True,
            lr_skip=True,
            vae_channels=32,
            block_channels=(64, 128),
            mid_channels=128,
            norm_groups=16,
            ff_mult=2,
            qgam_queries=16,
            qgam_dim=32,
            attention_head_dim=32,
        )

    @property
    def unet_downsamples(self) -> int:
        """Stride-2 steps inside the UNet: one between consecutive retained levels."""
        return len(self.block_channels) - 1

    @property
    def lr_multiple(self) -> int:
        """The LR size the network needs a multiple of (the model pads to it)."""
        hr_multiple = LATENT_FACTOR * 2**self.unet_downsamples
        return max(1, hr_multiple // self.scale)

    def replace(self, **changes: Any) -> "StudentConfig":
        """A copy with some fields changed (e.g. an ablation or the other encoder layout)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form, stored in weights files."""
        data = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        data["block_channels"] = list(self.block_channels)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "StudentConfig":
        """Inverse of `to_dict`; raises ValueError naming unknown or missing fields and bad values."""
        if not isinstance(data, dict):
            raise ValueError(f"config must be a JSON object, not {type(data).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown config field(s): {', '.join(unknown)}")
        if "scale" not in data:
            raise ValueError("config has no 'scale'")
        try:
            return cls(**data)
        except TypeError as exc:
            raise ValueError(str(exc)) from exc


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
