"""Data-parallel training across processes started by `torchrun` or `accelerate launch`.

Each process trains on its own batches; gradients are averaged with one
all-reduce per optimiser step (after gradient accumulation), which is what
DistributedDataParallel computes, without DDP's requirement that every
trainable parameter be reached through one wrapped module (the stages train
LoRA adapters, predictors, adapters and discriminators side by side). gloo on
CPU, nccl on GPUs. Without the launcher's environment it is a single process.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn


@dataclass(frozen=True)
class Processes:
    """This process's place among the training processes, and its device."""

    rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def start(device: str = "auto") -> Processes:
    """Join the process group the launcher described (WORLD_SIZE, RANK, LOCAL_RANK), if any.

    device: "auto" (CUDA when available), "cpu" or "cuda".
    """
    use_cuda = torch.cuda.is_available() if device == "auto" else device == "cuda"
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == 1:
        return Processes(0, 1, torch.device("cuda" if use_cuda else "cpu"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if use_cuda:
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    target = torch.device("cuda", local_rank) if use_cuda else torch.device("cpu")
    return Processes(dist.get_rank(), dist.get_world_size(), target)


def stop(processes: Processes) -> None:
    """Leave the process group (no-op for a single process)."""
    if processes.world_size > 1 and dist.is_initialized():
        dist.destroy_process_group()


def broadcast_module(module: nn.Module, processes: Processes) -> None:
    """Copy rank 0's parameters and buffers to every rank, so all start identical."""
    if processes.world_size == 1:
        return
    for tensor in [*module.parameters(), *module.buffers()]:
        dist.broadcast(tensor.data, src=0)


def average_gradients(parameters: list[nn.Parameter], processes: Processes) -> None:
    """Replace each gradient by its mean over ranks, in one flat all-reduce.

    A parameter without a gradient on this rank contributes zeros, so every
    rank passes the same buffer shape to the collective.
    """
    if processes.world_size == 1 or not parameters:
        return
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in parameters]
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= processes.world_size
    offset = 0
    for parameter in parameters:
        count = parameter.numel()
        parameter.grad = flat[offset:offset + count].view_as(parameter).clone()
        offset += count


def any_rank(flag: bool, processes: Processes) -> bool:
    """True when the flag is set on at least one rank (e.g. one rank ran out of wall-clock budget)."""
    if processes.world_size == 1:
        return flag
    value = torch.tensor([1.0 if flag else 0.0], device=processes.device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())
