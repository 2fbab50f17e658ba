"""Exponential moving average of a module's trainable weights, used for the exported model.

Single-step SR with a GAN term is noisy from step to step; the average of the
last ~1/(1-decay) steps is a smoother, usually better, model. The decay warms
up as min(decay, (1 + step) / (10 + step)): a plain EMA of 0.999 still holds
7 % of the initial weights after 2,600 steps, which for a CPU-sized run means
7 % of an untrained network in the shipped file.
"""

from __future__ import annotations

import torch
from torch import nn


class EMA:
    """Shadow copies of the trainable parameters of `module`, updated after every optimiser step."""

    def __init__(self, module: nn.Module, decay: float) -> None:
        self.decay = decay
        self.shadow = {n: p.detach().clone() for n, p in module.named_parameters() if p.requires_grad}

    def decay_at(self, step: int) -> float:
        """The decay used for the update after optimiser step `step` (0-based)."""
        return min(self.decay, (1 + step) / (10 + step))

    @torch.no_grad()
    def update(self, module: nn.Module, step: int) -> None:
        weight = 1 - self.decay_at(step)
        for name, parameter in module.named_parameters():
            if name in self.shadow:
                self.shadow[name].lerp_(parameter.detach(), weight)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.shadow

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        for name, tensor in state.items():
            self.shadow[name].copy_(tensor)
