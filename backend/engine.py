"""Run a super-resolution model over a raster window: device, tiles, blending, atomic output.

The engine owns device, dtype/autocast, channels_last, optional torch.compile
and batching; models own their padding and internal upsampling. Any
`nn.Module` with `forward(lr[B,3,h,w] in [0,1]) -> [B,3,h*s,w*s]` and a `scale`
attribute can be run. Loaded models are cached per (weights, scale, device), so
a long-lived server loads each once.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Optional

import numpy as np
import torch
from torch import nn

from . import __version__
from slimdiffsr_qgis.contract import BadInput, Cancelled
from .models.bicubic import BicubicUpscaler
from .models.norm_statistics import Statistics, fixed_group_norm_statistics, has_group_norm, record_group_norm_statistics
from .models.weights import file_sha256
from .normalisation import Normalisation, default_spec, parse_spec, resolve
from .raster import OutputRaster, SourceRaster, Window, check_output_path, set_block_cache
from slimdiffsr_qgis.contract import RunRequest
from .resources import default_weights_path
from .tiling import StreamingBlender, Tile, blend_in_memory, tile_grid

log = logging.getLogger("slimdiffsr")

# Tiles sampled for window-wide GroupNorm statistics: enough to stand for the window
# (measured with benchmarks/seam.py), few enough to add little to a long run.
STATISTICS_TILES = 8

Progress = Callable[[int, int], None]
ShouldCancel = Callable[[], bool]

SYNTHESIS_NOTE = ("Super-resolved by SlimDiffSR: detail finer than the input's pixel size is synthesised "
                  "by a neural network, not observed by the sensor")


@dataclass(frozen=True)
class LoadedModel:
    """A model ready to run, with what the output's provenance records about it."""

    module: nn.Module
    name: str
    weights: Optional[str]
    sha256: Optional[str]
    normalisation: Optional[str]


@dataclass(frozen=True)
class RunPlan:
    """What a request will produce, computed without running it."""

    width: int
    height: int
    bands: int
    dtype: str
    output_bytes: int
    free_bytes: int
    tiles: int
    window: Window


@dataclass(frozen=True)
class RunResult:
    """A finished run."""

    output: str
    seconds: float
    width: int
    height: int
    bands: int
    device: str
    model: str
    tiles: int


def cuda_status() -> tuple[bool, str]:
    """(usable, why) — usable only when a tensor can really be placed on the GPU."""
    if not torch.cuda.is_available():
        return False, "torch reports no CUDA device"
    try:
        torch.zeros(1, device="cuda")
    except RuntimeError as error:
        return False, f"CUDA is present but unusable: {str(error).splitlines()[0]}"
    return True, torch.cuda.get_device_name(0)


def select_device(name: str) -> torch.device:
    """auto -> cuda when usable, else cpu; the choice and its reason go to the log."""
    if name == "cpu":
        log.info("device: cpu (as requested)")
        return torch.device("cpu")
    usable, why = cuda_status()
    if name == "cuda" and not usable:
        raise BadInput(f"device cuda was requested but {why}; use device auto or cpu")
    if usable:
        log.info("device: cuda (%s)", why)
        return torch.device("cuda")
    log.info("device: cpu (%s)", why)
    return torch.device("cpu")


def describe_environment() -> dict[str, object]:
    """Versions and accelerator facts, for the server's hello and `slimdiffsr info`."""
    from osgeo import gdal

    usable, why = cuda_status()
    return {"package": __version__, "torch": torch.__version__, "gdal": gdal.__version__,
            "numpy": np.__version__, "cuda": usable, "cuda_detail": why, "cpu_threads": torch.get_num_threads()}


def _autocast(device: torch.device):
    if device.type != "cuda":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.autocast(device_type="cuda", dtype=dtype)


def infer_tiles(model: nn.Module, tiles: list[Tile], read: Callable[[Tile], np.ndarray], device: torch.device,
                batch: int, should_cancel: Optional[ShouldCancel] = None,
                progress: Optional[Progress] = None) -> Iterator[tuple[Tile, np.ndarray]]:
    """Run `model` over tiles in batches, yielding each tile's HR output [3, h*s, w*s] as float32.

    A model with GroupNorm normalises every tile with statistics of the whole window
    (`window_statistics`), not of the tile itself: per-tile statistics were nearly all of
    the difference between a tiled run and a single pass (backend/models/norm_statistics.py).
    progress(done, total) counts tile passes, the statistics pass's included, so a bar moves
    from the start; an output tile counts once the caller has taken it and asked for the next.
    Cancellation is checked before every batch, so a cancel lands within one batch.
    """
    sample = statistics_sample(model, tiles)
    total = len(sample) + len(tiles)
    report = (lambda done: progress(done, total)) if progress is not None else None
    statistics = window_statistics(model, sample, read, device, batch, should_cancel, report)
    done = len(sample)
    for chunk, hr in _batches(model, tiles, read, device, batch, should_cancel, statistics):
        for tile, output in zip(chunk, hr.float().cpu().numpy()):
            yield tile, output
            done += 1
            if report is not None:
                report(done)


def statistics_sample(model: nn.Module, tiles: list[Tile]) -> list[Tile]:
    """The tiles whose GroupNorm statistics stand for the window's: up to STATISTICS_TILES spread evenly over
    it, none where there is nothing to share (one tile, or a model without GroupNorm)."""
    if len(tiles) < 2 or not has_group_norm(model):
        return []
    count = min(len(tiles), STATISTICS_TILES)
    return [tiles[round(i * (len(tiles) - 1) / max(count - 1, 1))] for i in range(count)]


def window_statistics(model: nn.Module, sample: list[Tile], read: Callable[[Tile], np.ndarray],
                      device: torch.device, batch: int, should_cancel: Optional[ShouldCancel] = None,
                      on_tiles_done: Optional[Callable[[int], None]] = None) -> Optional[Statistics]:
    """GroupNorm statistics pooled over the `statistics_sample` tiles, or None for an empty sample.
    Costs one model pass per sampled tile; on_tiles_done(n) follows each batch."""
    if not sample:
        return None
    done = 0
    with record_group_norm_statistics(model) as statistics:
        for chunk, _ in _batches(model, sample, read, device, batch, should_cancel, None):
            done += len(chunk)
            if on_tiles_done is not None:
                on_tiles_done(done)
    return dict(statistics)


def _batches(model: nn.Module, tiles: list[Tile], read: Callable[[Tile], np.ndarray], device: torch.device,
             batch: int, should_cancel: Optional[ShouldCancel],
             statistics: Optional[Statistics]) -> Iterator[tuple[list[Tile], torch.Tensor]]:
    for start in range(0, len(tiles), batch):
        if should_cancel is not None and should_cancel():
            raise Cancelled("cancelled")
        chunk = tiles[start:start + batch]
        lr = torch.from_numpy(np.stack([read(tile) for tile in chunk])).to(device)
        if device.type == "cuda":
            lr = lr.contiguous(memory_format=torch.channels_last)
        shared = fixed_group_norm_statistics(model, statistics) if statistics else contextlib.nullcontext()
        with torch.inference_mode(), _autocast(device), shared:
            hr = model(lr)
        yield chunk, hr


def super_resolve_array(model: nn.Module, lr01: np.ndarray, tile: int, overlap: int, batch: int = 4,
                        device: str = "cpu") -> np.ndarray:
    """Tiled, blended inference on an in-memory [3, H, W] array in [0, 1]; returns [3, H*s, W*s]."""
    channels, height, width = lr01.shape
    torch_device = torch.device(device)
    model = model.to(torch_device).eval()
    tiles = tile_grid(width, height, tile, overlap)
    read = lambda t: np.ascontiguousarray(lr01[:, t.y:t.y + t.height, t.x:t.x + t.width], dtype=np.float32)
    outputs = infer_tiles(model, tiles, read, torch_device, batch)
    return blend_in_memory(width, height, tile, overlap, model.scale, channels, outputs)


class Engine:
    """Loads models once and runs requests against rasters."""

    def __init__(self, block_cache_mb: int = 64, compile_model: bool = False):
        set_block_cache(block_cache_mb)
        self.compile_model = compile_model
        self._models: dict[tuple, LoadedModel] = {}
        self._devices: dict[str, torch.device] = {}

    def device(self, name: str) -> torch.device:
        """The resolved torch device for a request's device name (decided once per name)."""
        if name not in self._devices:
            self._devices[name] = select_device(name)
        return self._devices[name]

    def load_model(self, request: RunRequest) -> LoadedModel:
        """The request's model on its device, loaded on first use and cached afterwards."""
        device = self.device(request.device)
        if request.model == "bicubic":
            key: tuple = ("bicubic", request.scale, str(device))
        else:
            weights = request.weights or default_weights_path(request.scale)
            if weights is None:
                raise BadInput(f"no default weights are shipped for x{request.scale}; give a weights file "
                               "(--weights) or use the classical baseline (--model bicubic)")
            weights = str(Path(weights).expanduser().resolve())
            if not os.path.isfile(weights):
                raise BadInput(f"weights file {weights} does not exist")
            key = (weights, os.path.getmtime(weights), str(device))
        if key not in self._models:
            self._models[key] = self._load(request, key, device)
        loaded = self._models[key]
        if loaded.module.scale != request.scale:
            raise BadInput(f"weights {loaded.name} were trained for x{loaded.module.scale}, not x{request.scale}; "
                           f"use scale {loaded.module.scale} or weights trained for x{request.scale}")
        return loaded

    def _load(self, request: RunRequest, key: tuple, device: torch.device) -> LoadedModel:
        if request.model == "bicubic":
            log.info("model: %s", BicubicUpscaler.label)
            return LoadedModel(BicubicUpscaler(request.scale).to(device), "bicubic", None, None, None)
        from .models import load

        weights = key[0]
        module = load(weights, device="cpu").to(device).eval()
        if device.type == "cuda":
            module = module.to(memory_format=torch.channels_last)
        if self.compile_model:
            module = torch.compile(module)
        meta = getattr(module, "meta", {}) or {}
        log.info("model: %s (%s)", Path(weights).name, meta.get("preset", "student"))
        return LoadedModel(module, Path(weights).name, weights, file_sha256(weights), meta.get("normalisation"))

    def plan(self, request: RunRequest, source: Optional[SourceRaster] = None) -> RunPlan:
        """Validate a request against its input and output and say what it will produce."""
        source = source or SourceRaster(request.input, request.bands)
        check_output_path(request.output, request.input, request.overwrite)
        if request.normalisation:
            parse_spec(request.normalisation)
        window = source.window_for_extent(request.extent, request.extent_crs)
        dtype = np.dtype(np.float32 if request.output_dtype == "float32" else source.dtype)
        width, height = window.width * request.scale, window.height * request.scale
        output_bytes = width * height * source.output_bands * dtype.itemsize
        folder = Path(request.output).resolve().parent
        free = shutil.disk_usage(folder).free
        if output_bytes > free:
            raise BadInput(f"the output ({width} x {height} px) needs up to {human_size(output_bytes)} but only "
                           f"{human_size(free)} is free in {folder}; free some space or choose another folder")
        tiles = len(tile_grid(window.width, window.height, request.tile, request.overlap))
        return RunPlan(width, height, source.output_bands, dtype.name, output_bytes, free, tiles, window)

    def run(self, request: RunRequest, progress: Optional[Progress] = None,
            should_cancel: Optional[ShouldCancel] = None, model: Optional[nn.Module] = None) -> RunResult:
        """Super-resolve the request's window into its output file.

        `model` overrides the request's weights (for tests and the Python API).
        Raises BadInput for requests that cannot run, Cancelled when
        `should_cancel` turns true; either way no output file is left.
        """
        started = time.perf_counter()
        source = SourceRaster(request.input, request.bands)
        plan = self.plan(request, source)
        device = self.device(request.device)
        if model is None:
            loaded = self.load_model(request)
        else:
            loaded = LoadedModel(model.to(device).eval(), type(model).__name__, None, None,
                                 (getattr(model, "meta", None) or {}).get("normalisation"))
        if loaded.module.scale != request.scale:
            raise BadInput(f"model {loaded.name} is x{loaded.module.scale}, not x{request.scale}")
        normalisation = self._normalisation(request, loaded, source, plan.window)
        log.info("input %s window %s -> output %s (%d x %d, %d band(s), %s), %d tile(s), normalisation %s",
                 request.input, plan.window, request.output, plan.width, plan.height, plan.bands, plan.dtype,
                 plan.tiles, normalisation.describe())
        self._write(request, source, plan, loaded, normalisation, device, progress, should_cancel)
        seconds = time.perf_counter() - started
        log.debug("wrote %s in %.1f s", request.output, seconds)
        return RunResult(request.output, seconds, plan.width, plan.height, plan.bands, str(device), loaded.name,
                         plan.tiles)

    def _normalisation(self, request: RunRequest, loaded: LoadedModel, source: SourceRaster,
                       window: Window) -> Normalisation:
        spec = request.normalisation or loaded.normalisation or default_spec(source.dtype)
        if parse_spec(spec)[0] == "fixed":
            return resolve(spec)
        sample, valid = source.read_sample(window)
        return resolve(spec, sample, valid)

    def _write(self, request: RunRequest, source: SourceRaster, plan: RunPlan, loaded: LoadedModel,
               normalisation: Normalisation, device: torch.device, progress: Optional[Progress],
               should_cancel: Optional[ShouldCancel]) -> None:
        window, scale = plan.window, request.scale
        out_dtype = np.dtype(plan.dtype)
        fill = _fill_values(source, window, normalisation)
        blender = StreamingBlender(window.width, window.height, request.tile, request.overlap, scale, 3,
                                   exact=out_dtype.kind == "f")
        batch = 4 if device.type == "cuda" else 1

        def read(tile: Tile) -> np.ndarray:
            values, valid = source.read(Window(window.x + tile.x, window.y + tile.y, tile.width, tile.height))
            normalised = normalisation.apply(values)
            if not valid.all():
                normalised[:, ~valid] = fill[:, None]
            return normalised

        metadata = {
            "SLIMDIFFSR_VERSION": __version__, "SLIMDIFFSR_MODEL": loaded.name,
            "SLIMDIFFSR_WEIGHTS": Path(loaded.weights).name if loaded.weights else "none",
            "SLIMDIFFSR_WEIGHTS_SHA256": loaded.sha256 or "none", "SLIMDIFFSR_SCALE": str(scale),
            "SLIMDIFFSR_NORMALISATION": normalisation.describe(),
            "SLIMDIFFSR_SOURCE": os.path.basename(request.input),
            "SLIMDIFFSR_SOURCE_WINDOW": f"{window.x},{window.y},{window.width},{window.height}",
            "SLIMDIFFSR_BANDS": ",".join(map(str, source.band_numbers)),
            "SLIMDIFFSR_NOTE": SYNTHESIS_NOTE,
        }
        with OutputRaster(request.output, plan.width, plan.height, plan.bands, out_dtype,
                          source.output_geotransform(window, scale), source.wkt, source.nodata,
                          source.has_mask, metadata) as output:
            tiles = infer_tiles(loaded.module, blender.tiles, read, device, batch, should_cancel, progress)
            for tile, hr in tiles:
                for block in blender.add(tile, hr):
                    valid = None
                    if source.has_mask or source.dtype == np.float32:
                        _, h, w = block.values.shape
                        lr_valid = source.read_valid(Window(window.x + block.x // scale, window.y + block.y // scale,
                                                            w // scale, h // scale))
                        valid = lr_valid.repeat(scale, axis=0).repeat(scale, axis=1)
                    values = block.values.mean(axis=0, keepdims=True) if plan.bands == 1 else block.values
                    restored = normalisation.invert(values, out_dtype)
                    if valid is not None and source.nodata is not None:
                        restored = _avoid_nodata(restored, valid, source.nodata)
                    output.write(block.x, block.y, restored, valid)
                if tile.column == blender.columns - 1:
                    release_free_memory()
            output.commit()


def release_free_memory() -> None:
    """Hand freed heap pages back to the OS (glibc only).

    Blending allocates and frees many large, differently sized arrays; glibc
    keeps such freed memory in its heap, so without this the resident size of
    a long run creeps up with the raster even though live memory does not.
    """
    if _LIBC is not None:
        _LIBC.malloc_trim(0)


def _load_libc() -> Optional[ctypes.CDLL]:
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.malloc_trim  # noqa: B018 - absent outside glibc
        return libc
    except (OSError, AttributeError):
        return None


_LIBC = _load_libc()


def _fill_values(source: SourceRaster, window: Window, normalisation: Normalisation) -> np.ndarray:
    """Per-channel value given to nodata pixels before inference: the window's normalised median."""
    if not source.has_mask and source.dtype != np.float32:
        return np.full(3, 0.5, np.float32)
    sample, valid = source.read_sample(window)
    normalised = normalisation.apply(sample)
    if not valid.any():
        return np.full(3, 0.5, np.float32)
    return np.array([np.median(channel[valid]) for channel in normalised], dtype=np.float32)


def _avoid_nodata(values: np.ndarray, valid: np.ndarray, nodata: float) -> np.ndarray:
    """Nudge valid pixels that came out equal to the nodata value, so they are not lost as nodata."""
    if values.dtype.kind not in "iu" or np.isnan(nodata):
        return values
    clash = (values == nodata) & valid[None]
    if clash.any():
        info = np.iinfo(values.dtype)
        values = values.copy()
        values[clash] = nodata + 1 if nodata < info.max else nodata - 1
    return values


def human_size(size: float) -> str:
    """Bytes as a short human string (1.5 GiB)."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024:
            return f"{size:.0f} B" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} TiB"
