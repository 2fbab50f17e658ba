"""How long a model takes for one 512x512 output: the speed figure every table reports.

One forward pass is timed with the device synchronised before and after it
(CUDA runs asynchronously, so an unsynchronised clock measures the launch);
autocast runs it in half precision when asked. `seconds_per_output` reports
the median of a few passes after a warm-up pass, which pays for the
allocator and the kernel choice once.
"""

from __future__ import annotations

import contextlib
import statistics
import time

import torch
from torch import nn

TIMED_SIDE = 512


def _synchronise(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def forward_seconds(model: nn.Module, lr: torch.Tensor, dtype: torch.dtype = torch.float32) -> float:
    """Wall seconds of one forward pass of `model` on `lr` (under autocast to `dtype` when not float32)."""
    device = lr.device
    autocast = torch.autocast(device.type, dtype=dtype) if dtype != torch.float32 else contextlib.nullcontext()
    _synchronise(device)
    start = time.perf_counter()
    with torch.inference_mode(), autocast:
        model(lr)
    _synchronise(device)
    return time.perf_counter() - start


def seconds_per_output(model: nn.Module, scale: int, device: torch.device, repeats: int = 3) -> float:
    """Median wall seconds for one TIMED_SIDE x TIMED_SIDE output of `model` (already on `device`)."""
    lr = torch.rand(1, 3, TIMED_SIDE // scale, TIMED_SIDE // scale, device=device)
    forward_seconds(model, lr)
    return statistics.median(forward_seconds(model, lr) for _ in range(repeats))
