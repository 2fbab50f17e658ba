"""The GAN term: a discriminator initialised from a DINO ViT in a local folder, or a PatchGAN fallback, with hinge losses.

DINO route (the paper's): a transformers ViT/DINOv2 model loaded from a local
folder (`save_pretrained` layout, safetensors) is the discriminator's backbone
and trains with it; small conv heads read the patch tokens of a few layers and
score every patch. `backbone="frozen"` keeps the DINO weights fixed and trains
the heads only (cheaper, and a weaker critic). Fallback without that folder: a
spectral-normalised PatchGAN trained from scratch. The run log says which one ran.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import spectral_norm

from slimdiffsr_qgis.contract import BadInput

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DINO_BACKBONES = ("trained", "frozen")


class PatchDiscriminator(nn.Module):
    """Image [B, 3, H, W] in [0, 1] -> per-patch realism logits."""

    def __init__(self, width: int = 64) -> None:
        super().__init__()
        self.body = nn.Sequential(
            spectral_norm(nn.Conv2d(3, width, 4, 2, 1)), nn.LeakyReLU(0.2),
            spectral_norm(nn.Conv2d(width, 2 * width, 4, 2, 1)), nn.LeakyReLU(0.2),
            spectral_norm(nn.Conv2d(2 * width, 4 * width, 4, 2, 1)), nn.LeakyReLU(0.2),
            spectral_norm(nn.Conv2d(4 * width, 1, 3, 1, 1)),
        )

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.body(image * 2 - 1)


class DinoDiscriminator(nn.Module):
    """DINO ViT features of several layers -> per-token heads -> logits; the ViT trains unless `frozen`."""

    def __init__(self, folder: Path, frozen: bool = False) -> None:
        super().__init__()
        from transformers import AutoModel

        self.backbone = AutoModel.from_pretrained(folder, local_files_only=True, use_safetensors=True)
        self.frozen = frozen
        if frozen:
            self.backbone.requires_grad_(False)
            self.backbone.eval()
        config = self.backbone.config
        self.patch = int(config.patch_size)
        self.size = int(config.image_size)
        depth = int(config.num_hidden_layers)
        self.layers = (max(1, depth // 2), depth)  # a middle and the last layer: texture and semantics
        width = int(config.hidden_size)
        self.heads = nn.ModuleList(
            nn.Sequential(spectral_norm(nn.Conv2d(width, width, 1)), nn.LeakyReLU(0.2), spectral_norm(nn.Conv2d(width, 1, 1)))
            for _ in self.layers
        )
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def train(self, mode: bool = True) -> "DinoDiscriminator":
        super().train(mode)
        if self.frozen:
            self.backbone.eval()
        return self

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(image, size=(self.size, self.size), mode="bilinear", align_corners=False)
        hidden = self.backbone(pixel_values=(x - self.mean) / self.std, output_hidden_states=True).hidden_states
        grid = self.size // self.patch
        logits = []
        for head, layer in zip(self.heads, self.layers):
            tokens = hidden[layer][:, -grid * grid:]
            feature = tokens.transpose(1, 2).reshape(tokens.shape[0], -1, grid, grid)
            logits.append(head(feature).flatten(1))
        return torch.cat(logits, dim=1)


def build_discriminator(dino_folder: Optional[str], fallback_width: int, backbone: str = "trained") -> tuple[nn.Module, str]:
    """DINO discriminator when a local folder is given, else PatchGAN; returns (module, log line).

    The log line starts with "fallback" exactly when the PatchGAN stands in for DINO.
    """
    if backbone not in DINO_BACKBONES:
        raise BadInput(f"discriminator_backbone must be one of {', '.join(DINO_BACKBONES)}, not {backbone!r}")
    if not dino_folder:
        return PatchDiscriminator(fallback_width), "fallback PatchGAN from scratch (no dino_folder given)"
    folder = Path(dino_folder)
    if not (folder / "config.json").is_file():
        raise BadInput(f"{folder} is not a DINO model folder (no config.json); give a transformers save_pretrained folder")
    how = "initialised from it and trained" if backbone == "trained" else "frozen, heads trained"
    return DinoDiscriminator(folder, frozen=backbone == "frozen"), f"DINO ViT from {folder} ({how})"


def discriminator_hinge(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """Hinge loss for the discriminator: push real above +1 and fake below -1."""
    return F.relu(1 - real_logits).mean() + F.relu(1 + fake_logits).mean()


def generator_hinge(fake_logits: torch.Tensor) -> torch.Tensor:
    """The generator raises the discriminator's score of its output."""
    return -fake_logits.mean()
