"""The paper's lightweight operators: FSC and DSC (for 3x3 convs) and QGAM (for self-attention).

Each one is a drop-in for the standard operator it replaces, with the same input and
output shapes, so the ablations of the paper's Table 6 swap them back one at a time.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _pointwise_pair(in_channels: int, out_channels: int, ratio: float) -> nn.Sequential:
    """Two 1x1 convs through a narrow hidden width: the channel mixing of FSC and DSC."""
    hidden = max(1, int(in_channels * ratio))
    return nn.Sequential(
        nn.Conv2d(in_channels, hidden, 1, bias=False),
        nn.SiLU(),
        nn.Conv2d(hidden, out_channels, 1),
    )


class FrequencySeparableConv(nn.Module):
    """FSC: depthwise convs on a low-pass and a high-pass part, weighted sum, two 1x1 convs.

    The low-pass part is a 3x3 box blur (cheap on any device); the high-pass part is
    the residual, so the two add up to the input exactly. Each part gets its own
    depthwise 3x3 conv, so fine detail (sparse in remote sensing imagery) and smooth
    content are filtered separately; learned per-channel weights fuse them. The
    fusion weights are parameters rather than a function of global statistics, so
    the operator stays local and tiles agree with a single pass.
    """

    def __init__(self, in_channels: int, out_channels: int, bottleneck_ratio: float = 0.25):
        super().__init__()
        self.low_conv = nn.Conv2d(in_channels, in_channels, 3, padding=1, groups=in_channels, bias=False)
        self.high_conv = nn.Conv2d(in_channels, in_channels, 3, padding=1, groups=in_channels, bias=False)
        self.fusion = nn.Parameter(torch.ones(2, in_channels, 1, 1))
        self.mix = _pointwise_pair(in_channels, out_channels, bottleneck_ratio)

    @staticmethod
    def split(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(low, high) with low + high == x: a 3x3 box blur and the residual."""
        low = F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)
        return low, x - low

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        low, high = self.split(x)
        low, high = self.low_conv(low), self.high_conv(high)
        fusion = self.fusion.to(low.dtype)  # under autocast the convs' fp16/bf16 output sets the dtype
        return self.mix(fusion[0] * low + fusion[1] * high)


class DirectionSeparableConv(nn.Module):
    """DSC: depthwise 1xk (horizontal) and kx1 (vertical) convs and their sequence, two 1x1 convs.

    Three paths: horizontal, vertical, and horizontal-then-vertical (a separable kxk
    kernel, which reaches the diagonals). Roads, field edges and shorelines give
    remote sensing imagery strong directional structure; the learned per-channel
    weights choose how much of each direction a channel keeps.
    """

    def __init__(self, in_channels: int, out_channels: int, bottleneck_ratio: float = 0.25, kernel: int = 3):
        super().__init__()
        half = kernel // 2
        self.horizontal = nn.Conv2d(
            in_channels, in_channels, (1, kernel), padding=(0, half), groups=in_channels, bias=False
        )
        self.vertical = nn.Conv2d(
            in_channels, in_channels, (kernel, 1), padding=(half, 0), groups=in_channels, bias=False
        )
        self.fusion = nn.Parameter(torch.full((3, in_channels, 1, 1), 1.0 / 3.0))
        self.mix = _pointwise_pair(in_channels, out_channels, bottleneck_ratio)

    def paths(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(horizontal, vertical, horizontal-then-vertical) filtered copies of x."""
        horizontal = self.horizontal(x)
        return horizontal, self.vertical(x), self.vertical(horizontal)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        horizontal, vertical, diagonal = self.paths(x)
        fusion = self.fusion.to(horizontal.dtype)
        return self.mix(fusion[0] * horizontal + fusion[1] * vertical + fusion[2] * diagonal)


def _attend(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Single-head attention returning (output, weights); softmax in float32 for fp16/bf16 safety.

    The query is scaled before the product so fp16 scores do not overflow.
    """
    scores = torch.matmul(query * key.shape[-1] ** -0.5, key.transpose(-1, -2))
    weights = scores.float().softmax(dim=-1).to(value.dtype)
    return torch.matmul(weights, value), weights


class QueryGlobalAggregation(nn.Module):
    """QGAM: M learnable queries gather a global context, then every token reads it back.

    Step 1 (Eq. 14): the M queries cross-attend to the N tokens -> context G [M, d].
    Step 2 (Eq. 15): the N tokens cross-attend to G -> global information per token.
    Both attention maps are N x M, so time and memory grow linearly in the number of
    tokens, unlike self-attention's N x N; the projections work in a narrow width d.
    """

    def __init__(self, channels: int, queries: int = 32, dim: int = 64):
        super().__init__()
        self.queries = nn.Parameter(torch.randn(queries, channels) * channels**-0.5)
        self.gather_q = nn.Linear(channels, dim, bias=False)
        self.gather_k = nn.Linear(channels, dim, bias=False)
        self.gather_v = nn.Linear(channels, dim, bias=False)
        self.spread_q = nn.Linear(channels, dim, bias=False)
        self.spread_k = nn.Linear(dim, dim, bias=False)
        self.spread_v = nn.Linear(dim, dim, bias=False)
        self.to_out = nn.Linear(dim, channels)

    def attention_maps(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(output [B, N, C], gather weights [B, M, N], spread weights [B, N, M]) for tokens [B, N, C]."""
        query = self.gather_q(self.queries.to(tokens.dtype)).expand(tokens.shape[0], -1, -1)
        context, gather = _attend(query, self.gather_k(tokens), self.gather_v(tokens))
        spread_out, spread = _attend(self.spread_q(tokens), self.spread_k(context), self.spread_v(context))
        return self.to_out(spread_out), gather, spread

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.attention_maps(tokens)[0]


class SelfAttention(nn.Module):
    """Standard multi-head self-attention (SD's attn1 without its text branch): the QGAM ablation.

    Names follow diffusers' `Attention` (to_q, to_k, to_v, to_out.0) so teacher weights map.
    """

    def __init__(self, channels: int, head_dim: int = 64):
        super().__init__()
        self.heads = channels // head_dim
        self.to_q = nn.Linear(channels, channels, bias=False)
        self.to_k = nn.Linear(channels, channels, bias=False)
        self.to_v = nn.Linear(channels, channels, bias=False)
        self.to_out = nn.ModuleList([nn.Linear(channels, channels)])

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        batch, count, channels = tokens.shape

        def heads(x: torch.Tensor) -> torch.Tensor:
            return x.view(batch, count, self.heads, -1).transpose(1, 2)

        out = F.scaled_dot_product_attention(heads(self.to_q(tokens)), heads(self.to_k(tokens)), heads(self.to_v(tokens)))
        return self.to_out[0](out.transpose(1, 2).reshape(batch, count, channels))
