"""Statistical and smoothness losses shared by the teacher and student stages.

`total_variation` regularises the teacher's predicted noise-level map (Eq. 22);
`mmd2_rbf` compares the distributions of student and teacher feature vectors in
stage-2 distillation (Eq. 18), so the student matches the teacher's feature
statistics and not only its per-pixel values.
"""

from __future__ import annotations

import torch


def total_variation(field: torch.Tensor) -> torch.Tensor:
    """Mean absolute difference between horizontal and vertical neighbours of a [B, C, H, W] map."""
    dy = (field[..., 1:, :] - field[..., :-1, :]).abs().mean()
    dx = (field[..., :, 1:] - field[..., :, :-1]).abs().mean()
    return dx + dy


def mmd2_rbf(x: torch.Tensor, y: torch.Tensor, bandwidths: tuple[float, ...] = (0.5, 1.0, 2.0, 4.0)) -> torch.Tensor:
    """Squared maximum mean discrepancy between samples x [N, D] and y [M, D] with RBF kernels.

    The bandwidths are multiples of the median pairwise squared distance (measured
    without gradient), so the loss is scale-free across feature levels whose
    magnitudes differ by orders of magnitude. Biased (V-statistic) estimate: it
    is exactly 0 for identical samples.
    """
    samples = torch.cat([x, y], dim=0)
    distances = torch.cdist(samples, samples).pow(2)
    scale = distances.detach().median().clamp_min(1e-8)
    kernel = sum(torch.exp(-distances / (scale * b)) for b in bandwidths)
    n = x.shape[0]
    return kernel[:n, :n].mean() + kernel[n:, n:].mean() - 2 * kernel[:n, n:].mean()

