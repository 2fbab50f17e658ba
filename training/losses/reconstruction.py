"""The reconstruction objective both the teacher and the student train with: L1 (or MSE) + w·perceptual + w·GAN.

Weights default to the paper's 1, 2.5 and 0.25 (Eq. 20-21). An optional MSE
term (weight `mse`, default 0) is for fidelity-first fine-tunes: PSNR is a
function of the MSE, and where the LR leaves the HR uncertain (degraded LR) the
mean that MSE learns scores a higher PSNR than the median that L1 learns. The module keeps
the last real and generated images so the loop can train the discriminator on
them right after the generator's step.

LPIPS and the DINO discriminator need pretrained weights from local paths. A
config that sets `allow_fallbacks: false` (the paper configs) refuses to start
when a weighted term would run on its fallback instead; with fallbacks allowed
the fallback is named in the run log and in the run's saved config.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, Mapping, Optional

import torch
import torch.nn.functional as F
from torch import nn

from slimdiffsr_qgis.contract import BadInput

from training.losses.adversarial import DINO_BACKBONES, build_discriminator, discriminator_hinge, generator_hinge
from training.losses.perceptual import build_perceptual
from training.runtime.config import typed


@dataclass(frozen=True)
class LossWeights:
    """The reconstruction terms' weights (a stage's `weights` subsection); the paper's 1, 2.5 and 0.25."""

    l1: float = 1.0
    mse: float = 0.0
    perceptual: float = 2.5
    gan: float = 0.25


@dataclass(frozen=True, kw_only=True)
class ReconstructionSettings:
    """The keys of a stage section that configure its reconstruction objective."""

    weights: LossWeights = field(default_factory=LossWeights)
    lpips_weights: Optional[str] = None
    dino_folder: Optional[str] = None
    discriminator_backbone: str = "trained"
    """"trained": initialised from DINO and trained, as in the paper; "frozen": its heads only."""
    discriminator_width: int = 64

    def __post_init__(self) -> None:
        if self.discriminator_backbone not in DINO_BACKBONES:
            raise BadInput(f"discriminator_backbone must be one of {', '.join(DINO_BACKBONES)}, "
                           f"not {self.discriminator_backbone!r}")


def describe(weights: LossWeights) -> str:
    """The weighted sum in words (e.g. "1·mse"), recorded in the product's training log: two runs with the
    same config but another loss cannot be told apart otherwise."""
    return " + ".join(f"{getattr(weights, item.name):g}·{item.name}" for item in fields(LossWeights)
                      if getattr(weights, item.name) > 0) or "nothing"


class Reconstruction:
    """Loss terms between a generated HR image and the real one; `critic` is None when the GAN weight is 0.

    `pretrained` maps each pretrained part in use ("perceptual", "discriminator")
    to what stands there, e.g. "LPIPS-VGG16 from F" or "fallback ...".
    """

    def __init__(self, settings: ReconstructionSettings | Mapping[str, Any], stage: str = "STAGE",
                 allow_fallbacks: bool = False) -> None:
        if not isinstance(settings, ReconstructionSettings):
            settings = typed(ReconstructionSettings, settings, stage)
        weights = settings.weights
        self.l1_weight, self.mse_weight = weights.l1, weights.mse
        self.perceptual_weight, self.gan_weight = weights.perceptual, weights.gan
        self.notes: list[str] = [f"reconstruction loss: {describe(weights)}"]
        self.pretrained: dict[str, str] = {}
        self.perceptual: Optional[nn.Module] = None
        if self.perceptual_weight > 0:
            _refuse_fallback(settings.lpips_weights, f"{stage}.lpips_weights", "perceptual (LPIPS)", allow_fallbacks)
            self.perceptual, self.pretrained["perceptual"] = build_perceptual(settings.lpips_weights)
        self.critic: Optional[nn.Module] = None
        if self.gan_weight > 0:
            _refuse_fallback(settings.dino_folder, f"{stage}.dino_folder", "gan (DINO discriminator)", allow_fallbacks)
            self.critic, self.pretrained["discriminator"] = build_discriminator(
                settings.dino_folder, settings.discriminator_width, settings.discriminator_backbone)
        self.notes += [f"{role}: {what}" for role, what in self.pretrained.items()]
        self._pair: Optional[tuple[torch.Tensor, torch.Tensor]] = None

    def to(self, device: torch.device) -> None:
        if self.perceptual is not None:
            self.perceptual.to(device)

    def generator_terms(self, fake: torch.Tensor, real: torch.Tensor) -> dict[str, torch.Tensor]:
        """Weighted terms (keys l1, and mse, perceptual, gan where weighted) whose sum the generator minimises."""
        terms = {"l1": self.l1_weight * F.l1_loss(fake, real)}
        if self.mse_weight > 0:
            terms["mse"] = self.mse_weight * F.mse_loss(fake, real)
        if self.perceptual is not None:
            terms["perceptual"] = self.perceptual_weight * self.perceptual(fake, real)
        if self.critic is not None:
            # The critic judges images in the valid range: unclamped, the generator could raise
            # the critic's (unbounded) score by pushing pixel values far outside [0, 1].
            judged = fake.clamp(0, 1)
            terms["gan"] = self.gan_weight * generator_hinge(self.critic(judged))
            self._pair = (real.detach(), judged.detach())
        return terms

    def critic_terms(self) -> dict[str, torch.Tensor]:
        """The discriminator's hinge loss on the images of the last `generator_terms` call."""
        real, fake = self._pair
        loss = discriminator_hinge(self.critic(real), self.critic(fake))
        return {"total": loss}


def _refuse_fallback(path: Optional[str], key: str, term: str, allowed: bool) -> None:
    """Without fallbacks allowed, a weighted term whose pretrained network is not given is a user error."""
    if not path and not allowed:
        weight = f"{key.split('.')[0]}.weights.{term.split()[0]}"
        raise BadInput(
            f"the {term} loss term needs pretrained weights but {key} is not set: give the local path "
            f"(--set {key}=PATH), drop the term (--set {weight}=0), or pass --allow-fallbacks to train with its fallback"
        )
