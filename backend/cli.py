"""The `slimdiffsr` command: run, check, serve, info and bench, without QGIS.

Exit codes: 0 success, 2 bad input (the message says what to change, including
files that cannot be read or written), 1 internal error (a bug: -v shows the
traceback), 130 cancelled by Ctrl-C and 143 by SIGTERM (either way the partial
output is removed).
"""

from __future__ import annotations

import argparse
import logging
import re
import signal
import sys
import time
from pathlib import Path
from types import FrameType
from typing import Optional, Sequence

from slimdiffsr_qgis.contract import BadInput, Cancelled, SlimDiffSRError
from slimdiffsr_qgis.contract import DEFAULT_CONSISTENCY, DEFAULT_OVERLAP, DEFAULT_TILE, DEVICES, SUPPORTED_SCALES, RunRequest, human_size

log = logging.getLogger("slimdiffsr")
CANCEL_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(BaseException):
    """Ctrl-C or SIGTERM outside a run's tile loop (imports, model loading): unwind at once.

    A BaseException, like KeyboardInterrupt, so no `except Exception` on the way swallows it.
    """

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


class Signals:
    """SIGINT and SIGTERM as a cancel: inside a run they ask the engine to stop between tiles (it removes
    its partial output); outside one, or when repeated, they unwind at once."""

    def __init__(self) -> None:
        self.received: Optional[int] = None
        self.in_run = False

    def install(self) -> None:
        for signum in CANCEL_SIGNALS:
            signal.signal(signum, self._handle)

    def _handle(self, signum: int, frame: Optional[FrameType]) -> None:
        first = self.received is None
        self.received = self.received or signum
        if not (self.in_run and first):
            raise Interrupted(self.received)

    def should_cancel(self) -> bool:
        return self.received is not None


def _numbers(text: str, kind: type, count: Optional[int], what: str) -> tuple:
    try:
        values = tuple(kind(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{what} must be comma-separated numbers, got {text!r}") from None
    if count is not None and len(values) != count:
        raise argparse.ArgumentTypeError(f"{what} needs {count} comma-separated numbers, got {len(values)}")
    return values


def _bands(text: str) -> Optional[tuple]:
    return None if text.strip().lower() == "all" else _numbers(text, int, None, "--bands")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (public so the README and tests can show its help)."""
    parser = argparse.ArgumentParser(prog="slimdiffsr", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging and tracebacks")
    # -v is accepted after the subcommand too (every error message suggests it); SUPPRESS keeps a
    # subcommand from resetting a -v given before it.
    verbose = argparse.ArgumentParser(add_help=False)
    verbose.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
                         help="debug logging and tracebacks")
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", parents=[verbose], help="super-resolve rasters into georeferenced GeoTIFFs",
                              description="slimdiffsr run IN OUT, or slimdiffsr run IN [IN ...] --out-dir DIR")
    run.add_argument("paths", nargs="+", help="IN OUT, or several inputs with --out-dir")
    run.add_argument("--out-dir", help="write <input>_x<scale>.tif for every input into this folder")
    run.add_argument("--scale", type=int, default=4, choices=SUPPORTED_SCALES)
    run.add_argument("--extent", type=lambda t: _numbers(t, float, 4, "--extent"),
                     help="xmin,ymin,xmax,ymax in map units (default: whole raster)")
    run.add_argument("--extent-crs", help="CRS of --extent, e.g. EPSG:4326 (default: the raster's CRS)")
    run.add_argument("--bands", type=_bands, default=None,
                     help="input bands written to the output, in this order, e.g. 4,3,2,8; "
                          "'all' (the default) writes every band of the input")
    run.add_argument("--rgb", type=lambda t: _numbers(t, int, 3, "--rgb"),
                     help="the colour triplet among the written bands, e.g. 4,3,2: these three go through the "
                          "model together; every other band goes through it alone (default: the bands marked "
                          "red, green and blue, else 1,2,3 of a 3- or 4-band raster)")
    source = run.add_mutually_exclusive_group()
    source.add_argument("--weights", help="student weights (.safetensors); default: the shipped weights")
    source.add_argument("--model", choices=["bicubic"], help="bicubic: the classical baseline, not super-resolution")
    run.add_argument("--device", default="auto", choices=DEVICES)
    run.add_argument("--tile", type=int, default=DEFAULT_TILE,
                     help=f"tile size in input pixels (default {DEFAULT_TILE}: chosen for the raster and device)")
    run.add_argument("--overlap", type=int, default=DEFAULT_OVERLAP, help="tile overlap in input pixels")
    run.add_argument("--normalisation", help="fixed:LO,HI or percentile:PLO,PHI (default: the weights' own)")
    run.add_argument("--float32", action="store_true", help="write float32 instead of the input's data type")
    run.add_argument("--overwrite", action="store_true", help="replace an existing output")
    run.add_argument("--consistency", choices=("off", "on"), default="on" if DEFAULT_CONSISTENCY else "off",
                     help="on (the default): back-project each tile so the output, reduced to the input grid, "
                          "reproduces the input (costs little; measured better on real imagery; it keeps the "
                          "noise of noisy or compressed inputs, so try off for those); the figures are recorded "
                          "either way")
    cluster = run.add_mutually_exclusive_group()
    cluster.add_argument("--workers", type=int,
                         help="run on a local Dask cluster of this many worker processes: one task per input "
                              "with --out-dir, or one input split into windows of tile rows")
    cluster.add_argument("--scheduler", help="run on an existing Dask cluster at this address, e.g. "
                                             "tcp://10.0.0.5:8786 (its workers must see the paths)")
    run.add_argument("--uncertainty", metavar="PATH",
                     help="also write the median absolute error expected of every output pixel to this GeoTIFF "
                          "(float32, the output's grid and units), from the error head shipped beside the weights")
    run.add_argument("--windows", type=int,
                     help="with --workers or --scheduler and one input: how many windows to split it into "
                          "(default: a few per worker)")

    check = commands.add_parser("check", parents=[verbose],
                                help="consistency of a super-resolved raster with its input (any tool's output)",
                                description="slimdiffsr check OUTPUT --input INPUT: the output reduced to the "
                                            "input grid against the input")
    check.add_argument("output", help="a super-resolved raster")
    check.add_argument("--input", required=True, help="the raster it was made from")
    check.add_argument("--bands", type=lambda t: _numbers(t, int, None, "--bands"),
                       help="the input bands the output's bands come from (default: as recorded by slimdiffsr, "
                            "else 1, 2, ...)")

    info = commands.add_parser("info", parents=[verbose],
                               help="describe a weights file, an output raster, or this machine's set-up")
    info.add_argument("weights", nargs="?", metavar="FILE",
                      help="a .safetensors weights file, or a GeoTIFF written by slimdiffsr")

    commands.add_parser("serve", parents=[verbose],
                        help="the backend process: JSON lines on stdin/stdout (used by the QGIS plugin)")

    bench = commands.add_parser("bench", parents=[verbose],
                                help="time the model on this machine: seconds per 512x512 output")
    bench_source = bench.add_mutually_exclusive_group()
    bench_source.add_argument("--weights")
    bench_source.add_argument("--model", choices=["bicubic"])
    bench.add_argument("--scale", type=int, default=4, choices=SUPPORTED_SCALES)
    bench.add_argument("--device", default="auto", choices=DEVICES)
    bench.add_argument("--repeats", type=int, default=3)
    return parser


def _requests(args: argparse.Namespace) -> list[RunRequest]:
    common = dict(scale=args.scale, extent=args.extent, extent_crs=args.extent_crs, bands=args.bands,
                  rgb=args.rgb, weights=args.weights, model=args.model, device=args.device, tile=args.tile, overlap=args.overlap,
                  normalisation=args.normalisation, output_dtype="float32" if args.float32 else "same",
                  overwrite=args.overwrite, consistency=args.consistency == "on")
    if args.uncertainty and (args.out_dir or len(args.paths) != 2):
        raise BadInput("--uncertainty names one file: give it with one input and one output (IN OUT)")
    if args.out_dir:
        folder = Path(args.out_dir)
        outputs = [str(folder / f"{output_stem(p)}_x{args.scale}.tif") for p in args.paths]
        if len(set(outputs)) != len(outputs):
            raise BadInput("two inputs share a file name, so their outputs in --out-dir would collide; rename one")
        return [RunRequest(input=p, output=o, **common) for p, o in zip(args.paths, outputs)]
    if len(args.paths) != 2:
        raise BadInput("give IN OUT, or several inputs with --out-dir DIR")
    return [RunRequest(input=args.paths[0], output=args.paths[1], uncertainty=args.uncertainty, **common)]


def output_stem(source: str) -> str:
    """A file-name stem for an input's output: the file's stem, plus the subdataset of a GDAL connection
    string (NETCDF:"f.nc":red -> f_red), with characters a file name should not hold replaced."""
    text = re.sub(r"^[A-Z][A-Z0-9_]+:", "", source.replace('"', ""))  # a driver prefix such as NETCDF:
    file, _, subdataset = text.partition(":")
    parts = (Path(file).stem, subdataset)
    return "_".join(filter(None, (re.sub(r"[^\w.-]+", "_", part).strip("_") for part in parts))) or "raster"


class _Progress:
    """A tqdm bar on a terminal, otherwise a line every 10 %. It counts tile passes: a multi-tile run of a
    GroupNorm model first passes a sample of its tiles for the window's shared statistics."""

    def __init__(self, label: str, unit: str = "tile pass"):
        self.label = label
        self.unit = unit
        self.bar = None
        self.last_decile = -1

    def __call__(self, done: int, total: int) -> None:
        if sys.stderr.isatty():
            if self.bar is None:
                from tqdm import tqdm

                self.bar = tqdm(total=total, desc=self.label, unit=self.unit, file=sys.stderr)
            self.bar.update(done - self.bar.n)
            return
        decile = done * 10 // total
        if decile != self.last_decile:
            self.last_decile = decile
            print(f"{self.label}: {done}/{total} {self.unit}{'es' if self.unit.endswith('s') else 's'}",
                  file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _run(args: argparse.Namespace, signals: Signals) -> int:
    from .engine import Engine

    requests = _requests(args)
    engine = Engine()
    plans = [engine.plan(request) for request in requests]
    if args.model == "bicubic":
        print("note: --model bicubic is the classical baseline (interpolation), not super-resolution",
              file=sys.stderr)
    if args.workers or args.scheduler:
        return _run_on_cluster(args, requests, signals)
    for request, plan in zip(requests, plans):
        print(f"{request.input} -> {request.output}: {plan.width} x {plan.height} px, {plan.bands} band(s) "
              f"{plan.dtype}, up to {human_size(plan.output_bytes)} ({human_size(plan.free_bytes)} free), "
              f"{plan.tiles} tile(s), {plan.passes} model pass(es) per tile", file=sys.stderr, flush=True)
        progress = _Progress(Path(request.input).name)
        signals.in_run = True
        try:
            result = engine.run(request, progress, signals.should_cancel)
        finally:
            signals.in_run = False
            progress.close()
        print(f"wrote {result.output}{f' and {result.uncertainty}' if result.uncertainty else ''} in "
              f"{result.seconds:.1f} s on {result.device}", file=sys.stderr)
    return 0


def _run_on_cluster(args: argparse.Namespace, requests: list[RunRequest], signals: Signals) -> int:
    from .cluster import connect, run_on_cluster, run_windows_on_cluster

    client = connect(args.workers, args.scheduler)
    where = f"{args.workers} local worker(s)" if args.workers else f"the cluster at {args.scheduler}"
    windowed = not args.out_dir
    print(f"{requests[0].input} in windows on {where}" if windowed else f"{len(requests)} scene(s) on {where}",
          file=sys.stderr, flush=True)
    progress = _Progress(Path(requests[0].input).name) if windowed else _Progress("scenes", "scene")
    signals.in_run = True
    try:
        if windowed:
            results = [run_windows_on_cluster(client, requests[0], args.windows, progress, signals.should_cancel)]
        else:
            results = run_on_cluster(client, requests, progress, signals.should_cancel)
    finally:
        signals.in_run = False
        progress.close()
        cluster = getattr(client, "cluster", None) if args.workers else None
        client.close()
        if cluster is not None:
            cluster.close()
    for result in results:
        print(f"wrote {result['output']} in {result['seconds']:.1f} s", file=sys.stderr)
    return 0


def _check(args: argparse.Namespace) -> int:
    from .check import check_files

    for line in check_files(args.output, args.input, args.bands).describe():
        print(line)
    return 0


def _info(args: argparse.Namespace) -> int:
    if args.weights and not args.weights.lower().endswith(".safetensors"):
        from .check import describe_output

        print(describe_output(args.weights))
        return 0
    if args.weights:
        from .models.error_head import HEAD_SUFFIX, describe_head
        from .models.summary import describe

        if args.weights.endswith(HEAD_SUFFIX):
            print(describe_head(args.weights))
            return 0

        if not Path(args.weights).is_file():
            raise BadInput(f"weights file {args.weights} does not exist")
        print(describe(args.weights))
        return 0
    from .engine import describe_environment
    from .resources import default_weights_path

    for key, value in describe_environment().items():
        print(f"{key}: {value}")
    for scale in SUPPORTED_SCALES:
        print(f"default weights x{scale}: {default_weights_path(scale) or 'none shipped'}")
    return 0


def _bench(args: argparse.Namespace) -> int:
    import torch

    from .engine import Engine, infer_tiles
    from .tiling import Tile

    engine = Engine()
    request = RunRequest(input="-", output="-.tif", scale=args.scale, weights=args.weights, model=args.model,
                         device=args.device)
    loaded = engine.load_model(request)
    device = engine.device(args.device)
    side = 512 // args.scale
    lr = torch.rand(3, side, side).numpy()
    tile = Tile(0, 0, side, side, 0, 0)
    timings = []
    for _ in range(args.repeats + 1):
        started = time.perf_counter()
        list(infer_tiles(loaded.module, [tile], lambda _: lr, device, 1))
        if device.type == "cuda":
            torch.cuda.synchronize()
        timings.append(time.perf_counter() - started)
    best = min(timings[1:])
    print(f"{loaded.name} on {device}: {best:.3f} s per 512x512 output ({0.262144 / best:.2f} MP/s)")
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of the `slimdiffsr` console script."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, stream=sys.stderr,
                        format="slimdiffsr: %(message)s")
    signals = Signals()
    try:
        if args.command == "serve":  # the server keeps the default signals: its client stops it through stdin
            from .server import main as serve

            return serve()
        signals.install()
        if args.command == "run":
            return _run(args, signals)
        if args.command == "info":
            return _info(args)
        if args.command == "check":
            return _check(args)
        return _bench(args)
    except (Cancelled, Interrupted, KeyboardInterrupt) as error:
        signum = getattr(error, "signum", None) or signals.received or signal.SIGINT
        print("slimdiffsr: cancelled; no output was left behind", file=sys.stderr)
        return 128 + signum
    except SlimDiffSRError as error:
        print(f"slimdiffsr: error: {error}", file=sys.stderr)
        return error.exit_code
    except Exception as error:  # an internal failure: say so plainly, details with --verbose
        if args.verbose:
            raise
        print(f"slimdiffsr: internal error: {type(error).__name__}: {error} (run with -v for details)",
              file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
