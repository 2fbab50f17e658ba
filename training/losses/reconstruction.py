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

from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import nn

from slimdiffsr_qgis.contract import BadInput

from training.losses.adversarial import build_discriminator, discriminator_hinge, generator_hinge
from training.losses.perceptual import build_perceptual

DEFAULT_WEIGHTS = {"l1": 1.0, "mse": 0.0, "perceptual": 2.5, "gan": 0.25}


def describe(weights: dict[str, float]) -> str:
    """The weighted sum in words (e.g. "1·mse"), recorded in the product's training log: two runs with the
    same config but another loss cannot be told apart otherwise."""
    return " + ".join(f"{float(w):g}·{name}" for name, w in weights.items()
                      if name in DEFAULT_WEIGHTS and float(w) > 0) or "nothing"


class Reconstruction:
    """Loss terms between a generated HR image and the real one; `critic` is None when the GAN weight is 0.

    `pretrained` maps each pretrained part in use ("perceptual", "discriminator")
    to what stands there, e.g. "LPIPS-VGG16 from F" or "fallback ...".
    """

    def __init__(self, settings: dict[str, Any], stage: str = "STAGE", allow_fallbacks: bool = False) -> None:
        weights = {**DEFAULT_WEIGHTS, **(settings.get("weights") or {})}
        self.l1_weight = float(weights["l1"])
        self.mse_weight = float(weights["mse"])
        self.perceptual_weight = float(weights["perceptual"])
        self.gan_weight = float(weights["gan"])
        self.notes: list[str] = [f"reconstruction loss: {describe(weights)}"]
        self.pretrained: dict[str, str] = {}
        self.perceptual: Optional[nn.Module] = None
        if self.perceptual_weight > 0:
            _refuse_fallback(settings.get("lpips_weights"), f"{stage}.lpips_weights", "perceptual (LPIPS)", allow_fallbacks)
            self.perceptual, self.pretrained["perceptual"] = build_perceptual(settings.get("lpips_weights"))
        self.critic: Optional[nn.Module] = None
        if self.gan_weight > 0:
            _refuse_fallback(settings.get("dino_folder"), f"{stage}.dino_folder", "gan (DINO discriminator)", allow_fallbacks)
            self.critic, self.pretrained["discriminator"] = build_discriminator(
                settings.get("dino_folder"), int(settings.get("discriminator_width", 64)),
                str(settings.get("discriminator_backbone", "trained")),
            )
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
