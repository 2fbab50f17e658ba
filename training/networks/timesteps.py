"""Invert a noise level ᾱ to a continuous diffusion timestep t* (Eq. 11), differentiably.

The scheduler's `alphas_cumprod` is a decreasing table over integer timesteps.
A predicted ᾱ generally lies between two entries, so we find the bracketing
pair by binary search and interpolate linearly; the interpolation weight is a
function of ᾱ, which gives a non-zero gradient d t*/d ᾱ = -1 / (ā_i - ā_{i+1})
and lets the noise-level predictor learn through the UNet's time embedding.
"""

from __future__ import annotations

import torch


def invert_alphas_cumprod(alpha_bar: torch.Tensor, alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """Continuous timestep t* with alphas_cumprod(t*) = alpha_bar, any shape.

    alpha_bar is clamped to the table's range, so t* lies in [0, T-1]; at a table
    entry alphas_cumprod[k] the result is exactly k.
    """
    table = alphas_cumprod.to(device=alpha_bar.device, dtype=alpha_bar.dtype)
    lowest, highest = table[-1], table[0]
    alpha_bar = torch.minimum(torch.maximum(alpha_bar, lowest), highest)
    # -table is increasing, so searchsorted finds the last i with table[i] >= alpha_bar.
    index = torch.searchsorted(-table, -alpha_bar.detach().contiguous(), right=True) - 1
    index = index.clamp(0, table.numel() - 2)
    upper = table[index]
    lower = table[index + 1]
    fraction = (upper - alpha_bar) / (upper - lower)
    return index.to(alpha_bar.dtype) + fraction
