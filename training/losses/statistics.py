"""Statistical and smoothness losses shared by the teacher and student stages.

`total_variation` regularises the teacher's predicted noise-level map (Eq. 21);
`mmd2_rbf` compares the distributions of student and teacher feature vectors in
stage-2 distillation (Eq. 16), so the student matches the teacher's feature
statistics and not only its per-pixel values.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch

PAPER_BANDWIDTHS = (1.0,)
"""Eq. 16 has one RBF kernel; `MULTI_BANDWIDTHS` is the option that mixes four around it."""
MULTI_BANDWIDTHS = (0.5, 1.0, 2.0, 4.0)


def total_variation(field: torch.Tensor) -> torch.Tensor:
    """Squared-L2 total variation of a [B, C, H, W] map (Eq. 21): the mean squared difference between
    vertical neighbours plus that between horizontal neighbours.

    Means rather than sums, so the weight λ_TV does not depend on the map's size.
    """
    dy = (field[..., 1:, :] - field[..., :-1, :]).pow(2).mean()
    dx = (field[..., :, 1:] - field[..., :, :-1]).pow(2).mean()
    return dx + dy


def median_distance(samples: torch.Tensor) -> torch.Tensor:
    """Median Euclidean distance over the distinct pairs of samples [N, D], without gradient."""
    return torch.pdist(samples.detach()).median().clamp_min(1e-8)


def mmd2_rbf(x: torch.Tensor, y: torch.Tensor, sigma: Optional[float] = None,
             bandwidths: Sequence[float] = PAPER_BANDWIDTHS) -> torch.Tensor:
    """Squared maximum mean discrepancy between samples x [N, D] and y [M, D] (Eq. 16).

    Kernel k(a, b) = exp(-|a - b|² / (2 σ²)). σ is the given value, else the
    median heuristic: the median distance between distinct pairs of the pooled
    samples, measured without gradient, so the loss is scale-free across
    feature levels whose magnitudes differ by orders of magnitude. With several
    `bandwidths` (multiples of σ) the kernel is their mean. Biased
    (V-statistic) estimate: exactly 0 for identical samples.
    """
    samples = torch.cat([x, y], dim=0)
    squared = torch.cdist(samples, samples).pow(2)
    base = median_distance(samples) if sigma is None else torch.tensor(float(sigma), device=samples.device)
    kernel = sum(torch.exp(-squared / (2 * (base * b) ** 2)) for b in bandwidths) / len(bandwidths)
    n = x.shape[0]
    return kernel[:n, :n].mean() + kernel[n:, n:].mean() - 2 * kernel[:n, n:].mean()
