"""Exponential moving average of a module's trainable weights, used for the exported model.

Single-step SR with a GAN term is noisy from step to step; the average of the
last ~1/(1-decay) steps is a smoother, usually better, model.
"""

from __future__ import annotations

import torch
from torch import nn


class EMA:
    """Shadow copies of the trainable parameters of `module`, updated after every optimiser step."""

    def __init__(self, module: nn.Module, decay: float) -> None:
        self.decay = decay
        self.shadow = {n: p.detach().clone() for n, p in module.named_parameters() if p.requires_grad}

    @torch.no_grad()
    def update(self, module: nn.Module) -> None:
        for name, parameter in module.named_parameters():
            if name in self.shadow:
                self.shadow[name].lerp_(parameter.detach(), 1 - self.decay)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.shadow

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        for name, tensor in state.items():
            self.shadow[name].copy_(tensor)
