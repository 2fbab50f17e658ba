"""What the uncertainty layer costs: a run with --uncertainty against the plain run, per shipped scale with a head.

    .venv/bin/python -m benchmarks.head_cost [--scales 4 2] [--side 256] [--repeats 3] [--threads 1]

Per scale whose shipped weights have an error head beside them: multiply-adds per output pixel of the head and
of the student (torch's flop counter on one random pass), then the wall time of the engine's whole run (read, tiled
inference, back-projection, write) on one synthetic `side` x `side` 3-band raster, without and with the
layer, the fastest of `repeats` interleaved runs of each. The layer stays off by default when the ratio is
above 1.3 (the bar for an option that costs more than it adds); the figure a user meets is the ratio.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from backend.engine import Engine
from backend.models import load
from backend.models.error_head import head_beside, load_head
from backend.models.weights import file_sha256
from backend.resources import default_weights_path
from benchmarks.rasters import textured_raster
from slimdiffsr_qgis.contract import RunRequest

MAC_SIDE = 64
"""LR side of the pass the multiply-adds are counted on (they are per output pixel, so any side will do)."""


def macs_per_output_pixel(model: torch.nn.Module, inputs: Sequence[torch.Tensor], output_pixels: int) -> float:
    """Multiply-accumulates of one forward pass of `model` on `inputs`, divided by the output's pixel count."""
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(*inputs)
    return counter.get_total_flops() / 2 / output_pixels


def seconds(request: RunRequest) -> float:
    """Wall seconds of one engine run (the output is overwritten each time)."""
    start = time.perf_counter()
    Engine().run(request)
    return time.perf_counter() - start


def measure(scale: int, side: int, repeats: int, folder: Path) -> Optional[list[str]]:
    """One table row for `scale`, or None when its shipped weights have no head."""
    weights = default_weights_path(scale)
    head_path = head_beside(weights) if weights else None
    if head_path is None:
        return None
    student, head = load(weights), load_head(head_path, file_sha256(str(weights)))
    lr = torch.rand(1, 3, MAC_SIDE, MAC_SIDE)
    sr = torch.rand(1, 3, MAC_SIDE * scale, MAC_SIDE * scale)
    pixels = (MAC_SIDE * scale) ** 2
    head_macs = macs_per_output_pixel(head, (lr, sr), pixels)
    student_macs = macs_per_output_pixel(student, (lr,), pixels)
    source = folder / f"input_x{scale}.tif"
    textured_raster(source, side, 3, np.uint16)
    plain = RunRequest(input=str(source), output=str(folder / "plain.tif"), scale=scale, weights=str(weights),
                       device="cpu", overwrite=True)
    layered = RunRequest(input=str(source), output=str(folder / "layered.tif"), scale=scale, weights=str(weights),
                         device="cpu", overwrite=True, uncertainty=str(folder / "layered_error.tif"))
    seconds(plain)  # warm-up: allocator and kernel choice
    times = {"plain": [], "layer": []}
    for _ in range(repeats):
        times["plain"].append(seconds(plain))
        times["layer"].append(seconds(layered))
    best_plain, best_layer = min(times["plain"]), min(times["layer"])
    return [f"x{scale}", f"{sum(p.numel() for p in head.parameters()):,}", f"{head_macs:,.0f}",
            f"{student_macs:,.0f}", f"{100 * head_macs / student_macs:.1f} %", f"{best_plain:.2f}",
            f"{best_layer:.2f}", f"{best_layer / best_plain:.3f}"]


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.head_cost", description=__doc__.splitlines()[0])
    parser.add_argument("--scales", type=int, nargs="+", default=[4, 2])
    parser.add_argument("--side", type=int, default=256, help="side of the synthetic input raster, LR pixels")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for scale in args.scales:
            row = measure(scale, args.side, args.repeats, Path(folder))
            if row is None:
                print(f"x{scale}: no shipped weights with a head beside them; skipped", file=sys.stderr)
            else:
                rows.append(row)
    print(f"{args.side} x {args.side} LR, 3 bands uint16, {torch.get_num_threads()} thread(s), best of "
          f"{args.repeats}; the engine's whole run with its defaults (back-projection on)\n")
    print("| scale | head parameters | head MACs / output pixel | student MACs / output pixel | head / student "
          "MACs | plain run (s) | with --uncertainty (s) | ratio |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for row in rows:
        print("| " + " | ".join(row) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
