"""GroupNorm with statistics taken from a whole window: the cause of the student's tile dependence.

Every GroupNorm in the student normalises over its input's whole spatial extent, so a
tile is normalised by its own content rather than by the window's. Measured on the
shipped x4 weights (`python -m benchmarks.seam ... --explain`), this is nearly all of
the difference between a tiled run and a single pass (0.99/255 -> 0.02/255 when the
tiles share the single pass's statistics; 1.22 -> 0.04/255 for a longer-trained file);
QGAM's per-tile queries add almost nothing.
`record_group_norm_statistics` keeps each GroupNorm's per-group mean and variance from
one forward pass; `fixed_group_norm_statistics` normalises later calls with them, so all
tiles of a window share one normalisation.
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


def _grouped(norm: nn.GroupNorm, x: torch.Tensor) -> torch.Tensor:
    return x.float().reshape(x.shape[0], norm.num_groups, -1)


def _affine(norm: nn.GroupNorm, normalised: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    out = normalised.reshape_as(like).to(like.dtype)
    if norm.affine:
        shape = (1, -1) + (1,) * (like.dim() - 2)
        out = out * norm.weight.view(shape) + norm.bias.view(shape)
    return out


@contextlib.contextmanager
def _patched(norms: dict[str, nn.GroupNorm], forward_for) -> Iterator[None]:
    for name, norm in norms.items():
        norm.forward = types.MethodType(forward_for(name), norm)
    try:
        yield
    finally:
        for norm in norms.values():
            del norm.forward


@contextlib.contextmanager
def record_group_norm_statistics(model: nn.Module) -> Iterator[Statistics]:
    """Within the block, each GroupNorm behaves as usual and keeps its latest per-group mean and variance
    (averaged over the batch) in the yielded dict, keyed by module name."""
    norms, statistics = _group_norms(model), {}

    def forward_for(name: str):
        def forward(norm: nn.GroupNorm, x: torch.Tensor) -> torch.Tensor:
            grouped = _grouped(norm, x)
            statistics[name] = (grouped.mean(dim=(0, 2)), grouped.var(dim=2, unbiased=False).mean(dim=0))
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
        mean, var = statistics[name]

        def forward(norm: nn.GroupNorm, x: torch.Tensor) -> torch.Tensor:
            grouped = _grouped(norm, x)
            normalised = (grouped - mean.view(1, -1, 1)) / torch.sqrt(var.view(1, -1, 1) + norm.eps)
            return _affine(norm, normalised, x)
        return forward

    with _patched(norms, forward_for):
        yield
