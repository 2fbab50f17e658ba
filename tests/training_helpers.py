"""Tiny training configs and a fixed batch for the training tests."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from training.runtime.config import load_config

TINY_CONFIG = Path(__file__).resolve().parent.parent / "training" / "configs" / "tiny_cpu.yaml"


def tiny_config(out: Path, *overrides: str) -> dict:
    """tiny_cpu.yaml writing to `out`, with "section.key=value" overrides."""
    return load_config(TINY_CONFIG, overrides, str(out))


class FixedPairs(torch.utils.data.Dataset):
    """Two smooth 32x32 HR images (detail at the latent grid's scale) and their x4 area-downsampled LR."""

    def __init__(self, count: int = 2, seed: int = 0) -> None:
        coarse = torch.rand(count, 3, 4, 4, generator=torch.Generator().manual_seed(seed))
        self.hr = F.interpolate(coarse, size=(32, 32), mode="bicubic", align_corners=False).clamp(0, 1)

    def __len__(self) -> int:
        return self.hr.shape[0]

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        hr = self.hr[index]
        return {"hr": hr, "lr": F.interpolate(hr[None], scale_factor=0.25, mode="area")[0]}
