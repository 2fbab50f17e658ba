"""Stage 0: the latent uncertainty estimator UE(z_lr) -> (z_mean, s = log z_var) and its loss (Eq. 5).

The estimator sees only the LR latent and predicts, per latent element, where
the HR latent probably is (z_mean) and how unsure it is (its log-variance s).
Stage 1 feeds exp(s) to the noise-level predictor, so regions the LR does not
determine (fine texture) get more noise than flat ones.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file
from torch import nn

from slimdiffsr_qgis.contract import BadInput


@dataclass
class UncertaintyConfig:
    """Width and depth of the estimator; latent_channels must match the VAE's."""

    latent_channels: int = 4
    width: int = 128
    blocks: int = 4
    groups: int = 32

    def to_metadata(self) -> dict[str, str]:
        return {k: str(v) for k, v in asdict(self).items()}

    @classmethod
    def from_metadata(cls, meta: dict[str, str]) -> "UncertaintyConfig":
        return cls(**{k: int(meta[k]) for k in asdict(cls()) if k in meta})


class ResBlock(nn.Module):
    """GroupNorm-SiLU-conv twice, with an identity skip."""

    def __init__(self, channels: int, groups: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.GroupNorm(groups, channels), nn.SiLU(), nn.Conv2d(channels, channels, 3, padding=1),
            nn.GroupNorm(groups, channels), nn.SiLU(), nn.Conv2d(channels, channels, 3, padding=1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class UncertaintyEstimator(nn.Module):
    """z_lr [B, C, h, w] -> (z_mean, s), both [B, C, h, w]; z_mean is a residual on z_lr."""

    def __init__(self, config: UncertaintyConfig) -> None:
        super().__init__()
        self.config = config
        c = config.latent_channels
        self.body = nn.Sequential(
            nn.Conv2d(c, config.width, 3, padding=1),
            *[ResBlock(config.width, config.groups) for _ in range(config.blocks)],
            nn.GroupNorm(config.groups, config.width), nn.SiLU(),
            nn.Conv2d(config.width, 2 * c, 3, padding=1),
        )

    def forward(self, z_lr: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        delta, log_var = self.body(z_lr).chunk(2, dim=1)
        return z_lr + delta, log_var


def uncertainty_nll(z_gt: torch.Tensor, z_mean: torch.Tensor, log_var: torch.Tensor) -> torch.Tensor:
    """L = 1/(2N) Σ (exp(-s)·|z_gt - z_mean|² + 3s): Gaussian NLL with a Jeffreys prior on the variance.

    The prior's extra 2s (on top of the Gaussian's s) moves the minimiser to
    s = log(|z_gt - z_mean|² / 3) and keeps the variance from collapsing.
    """
    squared_error = (z_gt - z_mean).pow(2)
    return 0.5 * (torch.exp(-log_var) * squared_error + 3 * log_var).mean()


def load_uncertainty(path: Path) -> UncertaintyEstimator:
    """A frozen estimator from the stage-0 file (config in its safetensors metadata)."""
    if not Path(path).is_file():
        raise BadInput(f"uncertainty estimator {path} does not exist; run python -m training.stages.uncertainty first")
    with safe_open(str(path), framework="pt") as handle:
        meta = handle.metadata() or {}
    model = UncertaintyEstimator(UncertaintyConfig.from_metadata(meta))
    model.load_state_dict(load_file(str(path)))
    return model.requires_grad_(False).eval()
