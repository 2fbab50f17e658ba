"""GroupNorm with statistics taken from a whole window: the cause of the student's tile dependence.

Every GroupNorm in the student normalises over its input's whole spatial extent, so a
tile is normalised by its own content rather than by the window's. Measured on the
shipped x4 weights, this was nearly all of the difference between a tiled run and a
single pass (0.99/255 -> 0.02/255 when the tiles shared the single pass's statistics;
1.22 -> 0.04/255 for a longer-trained file): QGAM's per-tile queries add almost nothing.
`record_group_norm_statistics` pools each GroupNorm's per-group mean and variance over
forward passes (e.g. over tiles); `fixed_group_norm_statistics` normalises later calls
with them, so all tiles of a window share one normalisation (the engine's
`window_statistics`).
"""

from __future__ import annotations

import contextlib
import types
from typing import Iterator

import torch
from torch import nn

Statistics = dict[str, tuple[torch.Tensor, torch.Tensor]]


def _group_norms(model: nn.Module) -> dict[str, nn.GroupNorm]:
    return {name: module for name, module in model.named_modules() if isinstance(module, nn.GroupNorm)}


@contextlib.contextmanager
def _patched(norms: dict[str, nn.GroupNorm], forward_for) -> Iterator[None]:
    for name, norm in norms.items():
        norm.forward = types.MethodType(forward_for(name), norm)
    try:
        yield
    finally:
        for norm in norms.values():
            del norm.forward


def has_group_norm(model: nn.Module) -> bool:
    return bool(_group_norms(model))


@contextlib.contextmanager
def record_group_norm_statistics(model: nn.Module) -> Iterator[Statistics]:
    """Within the block, each GroupNorm behaves as usual, and the yielded dict (keyed by module name) holds its
    per-group mean and variance pooled over every call so far, weighted by the elements each call saw: over
    several tiles, the statistics of their union."""
    norms, statistics = _group_norms(model), {}
    totals: dict[str, list] = {}

    def forward_for(name: str):
        def forward(norm: nn.GroupNorm, x: torch.Tensor) -> torch.Tensor:
            grouped = x.double().reshape(x.shape[0], norm.num_groups, -1)  # float64 sums: E[x²] - mean² cancels
            total = totals.setdefault(name, [0, 0.0, 0.0])
            total[0] += grouped.shape[0] * grouped.shape[2]
            total[1] = total[1] + grouped.sum(dim=(0, 2))
            total[2] = total[2] + grouped.square().sum(dim=(0, 2))
            mean = total[1] / total[0]
            statistics[name] = (mean.float(), (total[2] / total[0] - mean.square()).clamp_min(0.0).float())
            return nn.functional.group_norm(x, norm.num_groups, norm.weight, norm.bias, norm.eps)
        return forward

    with _patched(norms, forward_for):
        yield statistics


@contextlib.contextmanager
def fixed_group_norm_statistics(model: nn.Module, statistics: Statistics) -> Iterator[None]:
    """Within the block, each GroupNorm normalises with the given statistics instead of its input's own."""
    norms = _group_norms(model)
    missing = sorted(set(norms) - set(statistics))
    if missing:
        raise ValueError(f"no statistics for GroupNorm(s) {', '.join(missing)}")

    def forward_for(name: str):
        norm = norms[name]
        mean, var = statistics[name]
        per_channel = norm.num_channels // norm.num_groups
        scale = torch.rsqrt(var + norm.eps).repeat_interleave(per_channel)
        shift = -mean.repeat_interleave(per_channel) * scale
        if norm.affine:
            scale, shift = scale * norm.weight.detach().float(), shift * norm.weight.detach().float() + norm.bias.detach().float()

        def forward(norm: nn.GroupNorm, x: torch.Tensor) -> torch.Tensor:
            shape = (1, -1) + (1,) * (x.dim() - 2)  # fixed statistics make GroupNorm one multiply-add
            return torch.addcmul(shift.to(x.dtype).view(shape), x, scale.to(x.dtype).view(shape))
        return forward

    with _patched(norms, forward_for):
        yield
