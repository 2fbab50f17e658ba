"""The reconstruction objective both the teacher and the student train with: L1 (or MSE) + w·perceptual + w·GAN.

Weights default to the paper's 1, 2.5 and 0.25 (Eq. 20-21). An optional MSE
term (weight `mse`, default 0) is for fidelity-first fine-tunes: PSNR is a
function of the MSE, and where the LR leaves the HR uncertain (degraded LR) the
mean that MSE learns scores a higher PSNR than the median that L1 learns. The module keeps
the last real and generated images so the loop can train the discriminator on
them right after the generator's step.
"""

from __future__ import annotations

from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import nn

from .adversarial import build_discriminator, discriminator_hinge, generator_hinge
from .perceptual import build_perceptual

DEFAULT_WEIGHTS = {"l1": 1.0, "mse": 0.0, "perceptual": 2.5, "gan": 0.25}


def describe(weights: dict[str, float]) -> str:
    """The weighted sum in words (e.g. "1·mse"), recorded in the product's training log: two runs with the
    same config but another loss cannot be told apart otherwise."""
    return " + ".join(f"{float(w):g}·{name}" for name, w in weights.items()
                      if name in DEFAULT_WEIGHTS and float(w) > 0) or "nothing"


class Reconstruction:
    """Loss terms between a generated HR image and the real one; `critic` is None when the GAN weight is 0."""

    def __init__(self, settings: dict[str, Any]) -> None:
        weights = {**DEFAULT_WEIGHTS, **(settings.get("weights") or {})}
        self.l1_weight = float(weights["l1"])
        self.mse_weight = float(weights["mse"])
        self.perceptual_weight = float(weights["perceptual"])
        self.gan_weight = float(weights["gan"])
        self.notes: list[str] = [f"reconstruction loss: {describe(weights)}"]
        self.perceptual: Optional[nn.Module] = None
        if self.perceptual_weight > 0:
            self.perceptual, note = build_perceptual(settings.get("lpips_weights"))
            self.notes.append(note)
        self.critic: Optional[nn.Module] = None
        if self.gan_weight > 0:
            self.critic, note = build_discriminator(settings.get("dino_folder"), int(settings.get("discriminator_width", 64)))
            self.notes.append(note)
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
