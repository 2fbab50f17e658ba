"""Peak memory of a whole CLI run does not grow with the raster: 2000² vs 8000² uint8 RGB at x4.

Each run is a fresh process (`slimdiffsr run ... --model bicubic`), measured by
its own peak RSS. The 8000² run writes a 32000² x 3 output (3 GB uncompressed).

    .venv/bin/python benchmarks/memory.py [--sizes 2000 8000] [--workdir /tmp/slimdiffsr-memory]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from osgeo import gdal, osr

gdal.UseExceptions()


def make_input(path: Path, side: int) -> None:
    """A uint8 RGB GeoTIFF with texture, written in strips so making it needs little memory."""
    if path.exists():
        return
    dataset = gdal.GetDriverByName("GTiff").Create(str(path), side, side, 3, gdal.GDT_Byte,
                                                   options=["TILED=YES", "COMPRESS=DEFLATE"])
    dataset.SetGeoTransform((500000, 10, 0, 5000000, 0, -10))
    srs = osr.SpatialReference()
    srs.ImportFromEPSG(32633)
    dataset.SetProjection(srs.ExportToWkt())
    rng = np.random.default_rng(0)
    for top in range(0, side, 512):
        rows = min(512, side - top)
        y, x = np.mgrid[top:top + rows, 0:side]
        for band in range(3):
            plane = 128 + 60 * np.sin(x / (7 + band)) * np.cos(y / 11) + rng.normal(0, 20, (rows, side))
            dataset.GetRasterBand(band + 1).WriteArray(np.clip(plane, 0, 255).astype(np.uint8), 0, top)
    dataset = None


def child(input_path: str, output_path: str) -> None:
    """Run the CLI in this process and print its peak RSS (MiB) as JSON."""
    from backend.cli import main

    started = time.perf_counter()
    code = main(["run", input_path, output_path, "--model", "bicubic", "--scale", "4", "--overwrite"])
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"code": code, "peak_mib": peak_mib, "seconds": time.perf_counter() - started}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[2000, 8000])
    parser.add_argument("--workdir", default="/tmp/slimdiffsr-memory")
    parser.add_argument("--child", nargs=2, metavar=("IN", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(*args.child)
        return
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    rows = []
    for side in args.sizes:
        source = workdir / f"input_{side}.tif"
        make_input(source, side)
        output = workdir / f"output_{side}_x4.tif"
        run = subprocess.run([sys.executable, __file__, "--child", str(source), str(output)],
                             capture_output=True, text=True, check=True)
        report = json.loads(run.stdout.strip().splitlines()[-1])
        if report["code"] != 0:
            sys.exit(f"run failed for {side}: {run.stderr}")
        output_bytes = os.path.getsize(output)
        rows.append((side, report["peak_mib"], report["seconds"], output_bytes))
        output.unlink()
    print("| input | output | output file | seconds | peak RSS |")
    print("|---|---|---|---|---|")
    for side, peak, seconds, size in rows:
        print(f"| {side}² x3 uint8 | {side * 4}² x3 | {size / 2**30:.2f} GiB | {seconds:.0f} | {peak:.0f} MiB |")
    if len(rows) > 1:
        growth = rows[-1][1] - rows[0][1]
        print(f"\npeak RSS growth from {rows[0][0]}² to {rows[-1][0]}²: {growth:+.0f} MiB (acceptance: <= 150 MiB)")
    shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
