"""Peak memory of a run of the shipped student does not grow with the raster: 2000² vs 8000² at x4.

What is measured: the shipped x4 student (resources/weights/slimdiffsr_x4.safetensors,
or --weights) through the engine the CLI and the server use, default tile and
overlap, on a uint8 RGB raster at each size in --sizes, and on a 4-band uint16
raster (the colour triplet plus one band alone: two model passes per tile) at the
largest size.

Method: a run's memory is reached in its steady state: model, GroupNorm statistics
pass, the blender's strip of output rows, GDAL's bounded block cache. Whatever grows
with the raster grows either with its width (the strip, which is full after the
first tile row) or with the rows written (a leak or an unbounded cache). A whole
run of 8000² through the student takes hours on a CPU, so each run is stopped,
through the engine's own cancel, once its first --rows tile rows are complete
(--rows 0: the whole run), in a fresh process whose peak RSS (getrusage) is then
read. The peak after each completed row is printed too: a peak that keeps rising
row after row is growth the cut-off would hide, and shows there. Both sizes run the
same number of rows, so the 8000² run holds four times as wide a strip and has
written as many rows of blocks; the acceptance bar is a peak RSS growth under
150 MiB from the smallest RGB size to the largest.

The default costs about 270 model passes over 256² tiles (26 at 2000², 80 at 8000²,
160 for the 4-band 8000²): about 7 minutes at the student's 1.6 s per pass on an
idle CPU, several times that on a shared one.

    .venv/bin/python -m benchmarks.memory                          # 2000² vs 8000², 2 tile rows each
    .venv/bin/python -m benchmarks.memory --rows 0                 # whole runs: hours on a CPU
    .venv/bin/python -m benchmarks.memory --sizes 200 --rows 1     # a sanity check of the script, about a minute
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from backend.resources import default_weights_path
from benchmarks.rasters import textured_raster

ACCEPTANCE_MIB = 150
CHECKOUT = Path(__file__).resolve().parent.parent  # where `-m benchmarks.memory` finds its package
# Input kinds: (bands, numpy type).
KINDS = {"rgb": (3, np.dtype(np.uint8)), "4band": (4, np.dtype(np.uint16))}


def make_input(path: Path, side: int, kind: str) -> None:
    """The textured GeoTIFF of `kind` at `path`, unless an earlier run left it there."""
    if not path.exists():
        textured_raster(path, side, *KINDS[kind])


def current_rss_mib() -> float:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child(input_path: str, output_path: str, weights: str, rows: int) -> None:
    """Run the student over the first `rows` tile rows of the input in this process; print the peaks as JSON."""
    from backend.engine import Engine
    from backend.tiling import tile_grid
    from slimdiffsr_qgis.contract import Cancelled, RunRequest

    request = RunRequest(input=input_path, output=output_path, weights=weights, scale=4, overwrite=True)
    engine = Engine()
    plan = engine.plan(request)
    grid = tile_grid(plan.window.width, plan.window.height, plan.tile, request.overlap)
    rows_total = grid[-1].row + 1
    rows_run = rows_total if rows <= 0 else min(rows, rows_total)
    statistics_steps = plan.steps - plan.tiles * plan.passes
    # The progress count at which each tile row is complete: the statistics passes, then every pass of its tiles.
    row_ends = [statistics_steps + sum(t.row <= r for t in grid) * plan.passes for r in range(rows_run)]
    peaks_after_rows: list[float] = []
    done_so_far = [0]

    def progress(done: int, total: int) -> None:
        done_so_far[0] = done
        while len(peaks_after_rows) < len(row_ends) and done >= row_ends[len(peaks_after_rows)]:
            peaks_after_rows.append(round(peak_rss_mib()))

    def should_cancel() -> bool:
        return rows_run < rows_total and done_so_far[0] >= row_ends[-1]

    started = time.perf_counter()
    try:
        engine.run(request, progress, should_cancel)
    except Cancelled:
        pass
    print(json.dumps({"peak_mib": peak_rss_mib(), "rss_mib": current_rss_mib(), "seconds": time.perf_counter() - started,
                      "rows_run": rows_run, "rows_total": rows_total, "passes": plan.passes,
                      "tiles_run": sum(t.row < rows_run for t in grid), "tiles_total": len(grid),
                      "peaks_after_rows": peaks_after_rows}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[2000, 8000], help="sides of the RGB inputs, pixels")
    parser.add_argument("--four-band", type=int, default=None,
                        help="side of the 4-band input (default: the largest of --sizes; 0: no 4-band run)")
    parser.add_argument("--rows", type=int, default=2, help="tile rows to run per input; 0 runs the whole raster")
    parser.add_argument("--weights", default=None, help="student weights (default: the shipped x4 weights)")
    parser.add_argument("--workdir", default="/tmp/slimdiffsr-memory", help="inputs are kept here for reruns")
    parser.add_argument("--child", nargs=4, metavar=("IN", "OUT", "WEIGHTS", "ROWS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(*args.child[:3], int(args.child[3]))
        return
    weights = args.weights or default_weights_path(4)
    four_band = max(args.sizes) if args.four_band is None else args.four_band
    runs = [("rgb", side) for side in args.sizes] + ([("4band", four_band)] if four_band else [])
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    print(f"weights: {weights}; {args.rows or 'all'} tile row(s) per run", flush=True)
    print("| input | model passes / tile | tiles run | seconds | peak RSS | peak after each row |")
    print("|---|---|---|---|---|---|")
    peaks: dict[tuple[str, int], float] = {}
    for kind, side in runs:
        source = workdir / f"input_{side}_{kind}.tif"
        make_input(source, side, kind)
        output = workdir / f"output_{side}_{kind}_x4.tif"
        run = subprocess.run([sys.executable, "-m", "benchmarks.memory", "--child", str(source), str(output), weights,
                              str(args.rows)], capture_output=True, text=True, cwd=CHECKOUT)
        if run.returncode != 0:
            sys.exit(f"the {side}² {kind} run failed:\n{run.stderr[-3000:]}")
        report = json.loads(run.stdout.strip().splitlines()[-1])
        output.unlink(missing_ok=True)
        peaks[kind, side] = report["peak_mib"]
        print(f"| {side}² {kind} | {report['passes']} | {report['tiles_run']}/{report['tiles_total']} "
              f"({report['rows_run']}/{report['rows_total']} rows) | {report['seconds']:.0f} | "
              f"{report['peak_mib']:.0f} MiB | {', '.join(map(str, report['peaks_after_rows']))} |", flush=True)
    smallest, largest = min(args.sizes), max(args.sizes)
    if smallest != largest:
        growth = peaks["rgb", largest] - peaks["rgb", smallest]
        verdict = "meets" if growth < ACCEPTANCE_MIB else "FAILS"
        print(f"\npeak RSS growth from {smallest}² to {largest}² (RGB): {growth:+.0f} MiB "
              f"({verdict} the bar of < {ACCEPTANCE_MIB} MiB)")
    if ("rgb", four_band) in peaks and ("4band", four_band) in peaks:
        extra = peaks["4band", four_band] - peaks["rgb", four_band]
        print(f"4 bands (two passes per tile) instead of RGB at {four_band}²: {extra:+.0f} MiB")


if __name__ == "__main__":
    main()
