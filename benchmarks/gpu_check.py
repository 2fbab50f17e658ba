"""The prepared GPU check: CUDA against CPU, seconds per 512² per preset (eager and compiled), whole-raster
throughput through the engine and peak GPU memory, as one Markdown table from one call.

A session lent a GPU machine (one H200; 15 minutes of device time in all, one command of at most 5 minutes)
runs it in ONE call. That machine has python3 with torch+CUDA, numpy and safetensors but no GDAL and no
network, so GDAL travels as a wheel and the checkout is run in place (`pip install -e .` would fetch
numpy<2 and fail there). docs/performance.md, "GPU check", has the whole command line; its last part is

    PYTHONUNBUFFERED=1 timeout 290 python3 -m benchmarks.gpu_check --device cuda --out $OUT/gpu_check.md

Without a GPU (the test suite runs this so the script keeps working) every part runs at tiny sizes and the
CUDA-against-CPU rows say "no CUDA device":

    .venv/bin/python -m benchmarks.gpu_check --device cpu --size 64

Rows, in the order they run (cheap and most wanted first, torch.compile's slow warm-up last):
- environment: the device, and the versions of torch, CUDA, GDAL, numpy and Python.
- CUDA vs CPU: the shipped x4 weights on the shipped Sentinel-2 sample (normalised as the weights record),
  on CUDA in fp32, fp16 and bf16 autocast against the CPU in fp32: max and mean absolute difference of the
  output clamped to [0, 1], in 1/255 units.
- speed: seconds per 512² output (median of the repeats after warm-up) of the compact (shipped) and paper
  presets with random weights (speed does not depend on them), fp16 autocast, channels-last, batch 1;
  the paper's 0.037 s on an RTX 3090 beside the paper preset.
- whole raster: a SIZE² uint16 3-band input at x4 through `backend.engine.Engine().run` (the model loaded
  beforehand), in output MP/s, and model-only over the run as benchmarks/throughput.py computes it: the
  engine's own model call on the engine's tile for this input, the median per tile times the tiles that
  cover the output once.
- speed, torch.compile: the same as speed, compiled (inductor on CUDA), timed after warm-up.
Each row carries the peak GPU memory since the row began (torch.cuda.max_memory_allocated). A row that fails
shows its error and the next row runs; a row not started within the time budget says so; rows are printed
(and written to --out) as they finish, so a run stopped at its limit still leaves the rows it finished.
"""

from __future__ import annotations

import argparse
import functools
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch
from torch import nn

# The engine's own model call and batch, so model-only times exactly what a run asks of the model.
from backend.engine import Engine, _batch, _forward
from backend.models import StudentConfig, build, load
from backend.resources import default_weights_path, sample_raster_path
from benchmarks.rasters import textured_raster
from benchmarks.seam import read_input
from training.evaluation.timing import forward_seconds
from slimdiffsr_qgis.contract import RunRequest, human_size

SCALE = 4
# The paper's speed of its student (benchmarks/params.py has its 58.05 M parameters; importing that module
# here would need diffusers, which the GPU machine lacks).
PAPER_SPEED = "0.037 s per 512² on an RTX 3090 for its 58 M student"
PRESETS = {"compact (shipped)": StudentConfig.compact, "paper": StudentConfig.paper}
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
HEADER = ("| part | case | result | peak GPU memory | note |", "|---|---|---|---|---|")


@dataclass(frozen=True)
class Sizes:
    """How much each part does: full size on a GPU, tiny on a CPU so the test stays fast."""

    sample_side: int  # LR side of the sample crop compared on CUDA and CPU (the sample is 256²)
    output_side: int  # HR side each speed row times
    warmups: int  # calls before timing; the first compiles a compiled model
    repeats: int  # timed calls per speed row, and per model-only figure
    compile_backend: str  # the CPU path traces with dynamo only: inductor's C++ build takes minutes there
    budget_s: float  # rows not started by then are reported as skipped


SIZES = {
    "cuda": Sizes(sample_side=256, output_side=512, warmups=3, repeats=20, compile_backend="inductor",
                  budget_s=240),
    "cpu": Sizes(sample_side=32, output_side=128, warmups=1, repeats=1, compile_backend="eager", budget_s=600),
}


@dataclass(frozen=True)
class Case:
    """One row to run: `measure()` returns (result, note)."""

    part: str
    case: str
    measure: Callable[[], tuple[str, str]]


class Check:
    """The rows' shared state: device, sizes, and the models and inputs that several rows use."""

    def __init__(self, device: torch.device, sizes: Sizes, size: int, workdir: Path):
        self.device, self.sizes, self.size, self.workdir = device, sizes, size, workdir
        self._presets: dict[str, nn.Module] = {}

    @functools.cached_property
    def shipped_cpu(self) -> nn.Module:
        return load(default_weights_path(SCALE)).eval()

    @functools.cached_property
    def sample(self) -> torch.Tensor:
        """The sample crop as the model's input [1, 3, h, w] in [0, 1], normalised as the weights record."""
        spec = self.shipped_cpu.meta.get("normalisation")
        return torch.from_numpy(read_input(str(sample_raster_path()), self.sizes.sample_side, spec))[None]

    @functools.cached_property
    def cpu_reference(self) -> torch.Tensor:
        return run_clamped(self.shipped_cpu, self.sample, torch.float32)

    def preset(self, name: str) -> nn.Module:
        """A randomly initialised preset on the device, channels-last as the engine holds a model on CUDA;
        built once for its eager and compiled rows."""
        if name not in self._presets:
            torch.manual_seed(0)
            model = build(PRESETS[name](SCALE)).eval()
            self._presets[name] = model.to(self.device, memory_format=torch.channels_last)
        return self._presets[name]

    def cuda_vs_cpu(self, dtype: str) -> tuple[str, str]:
        reference = self.cpu_reference
        note = (f"shipped x{SCALE} weights, sample {self.sizes.sample_side}² -> "
                f"{self.sizes.sample_side * SCALE}², against CPU fp32; PyTorch's default TF32 convolutions"
                if dtype == "fp32" else f"shipped x{SCALE} weights, autocast, against CPU fp32")
        if self.device.type != "cuda":
            return "no CUDA device", note
        model = load(default_weights_path(SCALE)).eval().to(self.device, memory_format=torch.channels_last)
        lr = self.sample.to(self.device).contiguous(memory_format=torch.channels_last)
        difference = (run_clamped(model, lr, DTYPES[dtype]).cpu() - reference).abs() * 255
        return f"max {difference.max():.2f}/255, mean {difference.mean():.3f}/255", note

    def speed(self, preset: str, compiled: bool) -> tuple[str, str]:
        model = self.preset(preset)
        side = self.sizes.output_side // SCALE
        lr = torch.rand(1, 3, side, side, device=self.device).contiguous(memory_format=torch.channels_last)
        runner = torch.compile(model, backend=self.sizes.compile_backend) if compiled else model
        warm_up = [forward_seconds(runner, lr, torch.float16) for _ in range(self.sizes.warmups)]
        seconds = statistics.median(forward_seconds(runner, lr, torch.float16)
                                    for _ in range(self.sizes.repeats))
        parameters = sum(p.numel() for p in model.parameters())
        note = (f"{parameters / 1e6:.2f} M parameters, random weights; fp16, channels-last; median of "
                f"{self.sizes.repeats} after {self.sizes.warmups} warm-up call(s)")
        if compiled:
            note += f"; backend {self.sizes.compile_backend}, first call (compiling) {warm_up[0]:.1f} s"
        if preset == "paper":
            note += f"; paper: {PAPER_SPEED}"
        return f"{seconds:.4f} s per {self.sizes.output_side}²", note

    def whole_raster(self) -> tuple[str, str]:
        source = self.workdir / f"input_{self.size}.tif"
        textured_raster(source, self.size, 3, np.dtype(np.uint16))
        request = RunRequest(input=str(source), output=str(self.workdir / "output.tif"), scale=SCALE,
                             device=self.device.type, overwrite=True)
        engine = Engine()
        tile = engine.plan(request).tile  # loads the model, outside the timing
        model_seconds = self.model_only_seconds(engine.load_model(request).module, tile)
        started = time.perf_counter()
        result = engine.run(request)
        seconds = time.perf_counter() - started
        megapixels = result.width * result.height / 1e6
        return (f"{megapixels / seconds:.2f} output MP/s ({seconds:.1f} s for {megapixels:.3g} MP)",
                f"{self.size}² uint16 x{SCALE}, {result.tiles} tile(s) of {tile} on {result.device}; "
                f"{100 * model_seconds / seconds:.0f} % of model-only ({megapixels / model_seconds:.2f} MP/s)")

    def model_only_seconds(self, module: nn.Module, tile: int) -> float:
        """Seconds the engine's model call alone needs for the whole output: the median call on a batch of
        the engine's tiles, per tile, times the tiles that cover the input once (no overlap, statistics or I/O)."""
        batch = _batch(self.device)
        lr = np.random.default_rng(0).random((batch, 3, tile, tile), dtype=np.float32)

        def call() -> float:
            synchronise(self.device)
            started = time.perf_counter()
            _forward(module, lr, self.device, None)
            synchronise(self.device)
            return time.perf_counter() - started

        call()  # warm-up
        per_tile = statistics.median(call() for _ in range(self.sizes.repeats)) / batch
        return per_tile * (self.size / tile) ** 2

    def environment(self) -> tuple[str, str]:
        from osgeo import gdal

        device = torch.cuda.get_device_name(self.device) if self.device.type == "cuda" else "CPU"
        return (f"{device}; torch {torch.__version__}, CUDA {torch.version.cuda}",
                f"GDAL {gdal.__version__}, numpy {np.__version__}, Python {sys.version.split()[0]}")

    def cases(self) -> list[Case]:
        rows = [Case("environment", self.device.type, self.environment)]
        rows += [Case("CUDA vs CPU", dtype, functools.partial(self.cuda_vs_cpu, dtype)) for dtype in DTYPES]
        rows += [Case("speed", preset, functools.partial(self.speed, preset, False)) for preset in PRESETS]
        rows.append(Case("whole raster", f"{self.size}² -> {self.size * SCALE}²", self.whole_raster))
        rows += [Case("speed, torch.compile", preset, functools.partial(self.speed, preset, True))
                 for preset in PRESETS]
        return rows


def run_clamped(model: nn.Module, lr: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The model's output for lr in float32, clamped to [0, 1] as it reaches an integer raster."""
    with torch.inference_mode(), torch.autocast(lr.device.type, dtype=dtype, enabled=dtype != torch.float32):
        return model(lr).float().clamp(0, 1)


def synchronise(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def describe(error: BaseException) -> str:
    """An error on one line that cannot break the table: its type and the first line of its message."""
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0] if lines else ''}".replace("|", "/")


def run_row(case: Case, device: torch.device, deadline: float) -> str:
    """The case's table row: its result, or its error, or that the time budget was spent before it began."""
    if time.monotonic() > deadline:
        return f"| {case.part} | {case.case} | skipped: the time budget was spent | | |"
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    try:
        result, note = case.measure()
    except Exception as error:  # a failing row must not cost the rows after it
        result, note = f"failed: {describe(error)}", ""
    memory = human_size(torch.cuda.max_memory_allocated()) if device.type == "cuda" else "no CUDA device"
    return f"| {case.part} | {case.case} | {result} | {memory} | {note} |"


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=sorted(SIZES), default="cuda")
    parser.add_argument("--size", type=int, default=4096, help="side of the whole-raster input (output is 4x)")
    parser.add_argument("--out", type=Path, default=None, help="also write the table to this file")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("--device cuda: torch reports no CUDA device; use --device cpu", file=sys.stderr)
        return 2
    device = torch.device(args.device)
    sizes = SIZES[args.device]
    deadline = time.monotonic() + sizes.budget_s
    lines = list(HEADER)
    print(*lines, sep="\n", flush=True)
    with tempfile.TemporaryDirectory(prefix="slimdiffsr-gpu-check-") as workdir:
        check = Check(device, sizes, args.size, Path(workdir))
        for case in check.cases():
            lines.append(run_row(case, device, deadline))
            print(lines[-1], flush=True)
            if args.out is not None:
                args.out.write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
