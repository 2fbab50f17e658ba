"""How close a whole CLI run comes to the model's own speed: output megapixels/s of both, their ratio, peak RSS.

    .venv/bin/python -m benchmarks.throughput [--size 2048] [--weights W] [--threads N] [--workdir D]

One process. First the model alone: the loaded student on LR tiles of the size the engine chooses for this
input on this device (`backend.engine.run_tile`), as many as cover the output once with no overlap, no
statistics pass, no I/O (the least the pipeline could cost at that tile size).
Then the whole CLI run (`slimdiffsr run IN OUT`, called in-process) on a SIZE² uint16 3-band input at x4,
with everything it does: reading, normalisation, tiling with overlap, the GroupNorm statistics pass,
blending, writing a compressed GeoTIFF. The last line reads `pipeline throughput: N % of model-only`.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from backend.cli import main as cli_main
from backend.engine import run_tile
from backend.models import load
from backend.raster import Window
from backend.resources import default_weights_path
from benchmarks.rasters import textured_raster
from slimdiffsr_qgis.contract import RunRequest

SCALE = 4
REPEATS = 3


def model_only_seconds(weights: str, side: int) -> tuple[float, int]:
    """Seconds the model alone needs for a side² input's output (the median tile time times the tiles), and
    the tile side."""
    model = load(weights).eval()
    tile = run_tile(RunRequest(input="-", output="-.tif"), model, torch.device("cpu"), Window(0, 0, side, side))
    lr = torch.rand(1, 3, tile, tile)
    timings = []
    with torch.inference_mode():
        model(lr)
        for _ in range(REPEATS):
            started = time.perf_counter()
            model(lr)
            timings.append(time.perf_counter() - started)
    tiles = (side / tile) ** 2
    return statistics.median(timings) * tiles, tile


def peak_rss_mb() -> float:
    """This process's peak resident set size so far, in MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=2048, help="input side in pixels (output is 4x)")
    parser.add_argument("--weights", default=str(default_weights_path(SCALE)))
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--workdir", default=None, help="where to write the input and output (default: a temp dir)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    output_megapixels = (args.size * SCALE) ** 2 / 1e6
    with tempfile.TemporaryDirectory(prefix="slimdiffsr-throughput-") as temp:
        work = Path(args.workdir or temp)
        work.mkdir(parents=True, exist_ok=True)
        source = work / f"input_{args.size}.tif"
        if not source.exists():
            textured_raster(source, args.size, 3, np.dtype(np.uint16))
        model_seconds, tile = model_only_seconds(args.weights, args.size)
        print(f"model only: {model_seconds:.1f} s for {output_megapixels:.1f} output MP "
              f"({output_megapixels / model_seconds:.3f} MP/s; tiles of {tile}; {args.threads} thread(s))", flush=True)
        started = time.perf_counter()
        code = cli_main(["run", str(source), str(work / "output.tif"), "--weights", args.weights, "--overwrite"])
        pipeline_seconds = time.perf_counter() - started
        if code != 0:
            print(f"the CLI run failed with exit code {code}")
            return code
    print(f"whole CLI run: {pipeline_seconds:.1f} s ({output_megapixels / pipeline_seconds:.3f} MP/s)")
    print(f"peak RSS: {peak_rss_mb():.0f} MiB")
    print(f"pipeline throughput: {100 * model_seconds / pipeline_seconds:.0f} % of model-only")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
