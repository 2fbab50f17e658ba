"""Seconds per 512x512 x4 output and output megapixels/s: student presets, RRDBNet, the reference CNN, bicubic.

Run: .venv/bin/python -m benchmarks.speed [--repeats 3] [--threads N] [--device cuda --dtype float16]
All models run in one process on the same input, interleaved, so background load
hits them alike; each figure is the fastest of the repeats (the least disturbed run),
where training's report (`training.evaluation.timing.seconds_per_output`) takes
the median of one model's repeats: this table ranks models against each other
under the same load. Both time a pass with `training.evaluation.timing.forward_seconds`.
Weights are random: speed does not depend on them. GMACs are counted from a forward
pass on the meta device (torch.utils.flop_counter; a MAC is two FLOPs).
"""

from __future__ import annotations

import argparse
import os
from typing import Callable

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from backend.models import StudentConfig, build
from backend.models.bicubic import BicubicUpscaler
from benchmarks.reference_cnn import ReferenceCNN
from benchmarks.rrdbnet import RRDBNet
from training.evaluation.timing import TIMED_SIDE, forward_seconds

SCALE = 4
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def candidates() -> list[tuple[str, Callable[[], nn.Module], torch.memory_format]]:
    """(label, constructor, input memory format) of every row.

    The student runs channels-last inside whatever it is given, so RRDBNet is timed in
    both layouts and the comparison uses its faster one.
    """
    return [
        ("SlimDiffSR paper preset, encoder=hr", lambda: build(StudentConfig.paper(SCALE)), torch.contiguous_format),
        ("SlimDiffSR paper preset, encoder=lr", lambda: build(StudentConfig.paper(SCALE).replace(encoder="lr")),
         torch.contiguous_format),
        ("SlimDiffSR compact (shipped default)", lambda: build(StudentConfig.compact(SCALE)), torch.contiguous_format),
        ("reference CNN", lambda: ReferenceCNN(SCALE), torch.channels_last),
        ("RRDBNet x4plus dims, NCHW", RRDBNet, torch.contiguous_format),
        ("RRDBNet x4plus dims, channels_last", RRDBNet, torch.channels_last),
        ("bicubic", lambda: BicubicUpscaler(SCALE), torch.contiguous_format),
    ]


def gmacs(make: Callable[[], nn.Module], lr_size: int) -> float:
    """Multiply-accumulates of one forward pass, in billions, counted on the meta device."""
    with torch.device("meta"):
        model = make()
        with FlopCounterMode(display=False) as counter:
            model(torch.empty(1, 3, lr_size, lr_size))
    return counter.get_total_flops() / 2e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="float32")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    device = torch.device(args.device)
    dtype = DTYPES[args.dtype]
    lr_size = TIMED_SIDE // SCALE
    lr = torch.rand(1, 3, lr_size, lr_size, device=device)

    rows = []
    for label, make, layout in candidates():
        model = make().eval().to(device=device, memory_format=layout)
        params = sum(p.numel() for p in model.parameters())
        rows.append([label, model, lr.contiguous(memory_format=layout), params, gmacs(make, lr_size), []])
    for _, model, model_input, *_ in rows:
        forward_seconds(model, model_input, dtype)  # warm-up: allocator, oneDNN/cuDNN kernel choice
    for _ in range(args.repeats):
        for _, model, model_input, _, _, times in rows:
            times.append(forward_seconds(model, model_input, dtype))

    reference = min(min(row[5]) for row in rows if row[0].startswith("RRDBNet"))
    print(
        f"x{SCALE}, {lr_size}x{lr_size} -> {TIMED_SIDE}x{TIMED_SIDE}, device={device}, dtype={args.dtype}, "
        f"threads={torch.get_num_threads()}, best of {args.repeats}; 'vs RRDBNet' is against its faster layout"
    )
    print(f"{'model':<40} {'params':>9} {'GMACs':>8} {f's/{TIMED_SIDE}^2':>9} {'out MP/s':>9} {'vs RRDBNet':>10}")
    for label, _, _, params, macs, times in rows:
        best = min(times)
        print(
            f"{label:<40} {params / 1e6:8.2f}M {macs:8.1f} {best:9.3f} "
            f"{TIMED_SIDE * TIMED_SIDE / 1e6 / best:9.3f} {reference / best:9.2f}x"
        )


if __name__ == "__main__":
    main()
