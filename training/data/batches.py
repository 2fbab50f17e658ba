"""Reproducible micro-batches for the training loop, from any map-style dataset.

Each item is drawn with every random generator (Python, NumPy, torch) seeded
from (run seed, rank, step, micro-batch, item), inside whichever process loads
it, so random crops and degradations are the same after a resume and with any
number of loader workers, and each rank sees different data.
"""

from __future__ import annotations

import random
from typing import Callable, Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from training.runtime.loop import step_seed


class _SeededItems(Dataset):
    """dataset[(index, seed)] = dataset[index] drawn under `seed`."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]):
        index, seed = key
        random.seed(seed)
        np.random.seed(seed % (2**32))
        torch.manual_seed(seed)
        return self.dataset[index]


class _StepSampler(Sampler):
    """Lists of (index, seed), one list per micro-batch, from `start_step` on, forever."""

    def __init__(self, size: int, batch_size: int, grad_accum: int, seed: int, rank: int, start_step: int) -> None:
        self.size, self.batch_size, self.grad_accum = size, batch_size, grad_accum
        self.seed, self.rank, self.start_step = seed, rank, start_step

    def __iter__(self):
        step = self.start_step
        while True:
            for micro in range(self.grad_accum):
                base = step_seed(self.seed, self.rank, step, micro)
                generator = torch.Generator().manual_seed(base)
                indices = torch.randint(self.size, (self.batch_size,), generator=generator).tolist()
                yield [(index, base * 1009 + slot) for slot, index in enumerate(indices)]
            step += 1


def seeded_batches(
    dataset: Dataset, batch_size: int, grad_accum: int, seed: int, num_workers: int = 0
) -> Callable[[int, int], Iterator[dict[str, torch.Tensor]]]:
    """The `batches(start_step, rank)` callable `loop.train` expects; items are dicts of tensors."""
    if len(dataset) == 0:
        raise ValueError("the training dataset is empty")

    def batches(start_step: int, rank: int) -> Iterator[dict[str, torch.Tensor]]:
        sampler = _StepSampler(len(dataset), batch_size, grad_accum, seed, rank, start_step)
        loader = DataLoader(
            _SeededItems(dataset), batch_sampler=sampler, num_workers=num_workers,
            persistent_workers=num_workers > 0,
        )
        return iter(loader)

    return batches
