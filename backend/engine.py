"""Run a super-resolution model over a raster window: device, band passes, tiles, blending, atomic output.

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
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Iterator, Optional, Sequence

import numpy as np
import torch
from torch import nn

from slimdiffsr_qgis.contract import BadInput, Cancelled, RunRequest, human_size

from . import __version__
from .bands import plan_passes
from .check import figures_of
from .consistency import back_project
from .models.bicubic import BicubicUpscaler
from .models.norm_statistics import Statistics, fixed_group_norm_statistics, has_group_norm, record_group_norm_statistics
from .models.weights import file_sha256
from .normalisation import Normalisation, default_spec, parse_spec, resolve
from .raster import (OutputRaster, SourceRaster, Window, check_output_path, remove_stale_partials,
                     set_block_cache)
from .resources import default_weights_path
from .tiling import StreamingBlender, Tile, blend_in_memory, tile_grid

log = logging.getLogger("slimdiffsr")

# Tiles sampled for window-wide GroupNorm statistics: enough to stand for the window
# (measured with benchmarks/seam.py), few enough to add little to a long run.
STATISTICS_TILES = 8

# The one pass of a 3-channel array: its channels through the model together.
RGB_PASS = ((0, 1, 2),)

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
    passes: int  # band passes through the model: the colour triplet, then every other band alone
    steps: int  # model passes over tiles, statistics samples included: the progress total
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
    passes: int
    steps: int
    consistency: dict[str, str]
    """The output's consistency figures as recorded in its metadata (SLIMDIFFSR_CONSISTENCY_*)."""


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
            "numpy": np.__version__, "cuda": usable, "cuda_present": torch.cuda.is_available(),
            "cuda_detail": why, "cpu_threads": torch.get_num_threads()}


def _autocast(device: torch.device):
    if device.type != "cuda":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.autocast(device_type="cuda", dtype=dtype)


def infer_tiles(model: nn.Module, tiles: list[Tile], read: Callable[[Tile], np.ndarray], device: torch.device,
                batch: int, should_cancel: Optional[ShouldCancel] = None, progress: Optional[Progress] = None,
                passes: Sequence[tuple[int, ...]] = RGB_PASS,
                consistency: bool = False) -> Iterator[tuple[Tile, np.ndarray]]:
    """Run `model` over tiles in batches, yielding each tile's HR output [C, h*s, w*s] as float32.

    read(tile) gives the tile's model input [C, h, w] in [0, 1]. Each pass feeds the
    model the channels it names: three together (a colour triplet), or one replicated
    to the model's three channels, whose output is the mean of the three output
    channels. All passes of a batch run before it is yielded, so every output tile
    is whole and is blended and written once.
    A model with GroupNorm normalises every tile with statistics of the whole window
    (`window_statistics`), not of the tile itself: per-tile statistics were nearly all of
    the difference between a tiled run and a single pass (backend/models/norm_statistics.py).
    Each pass has its own statistics, since each feeds the model different content.
    progress(done, total) counts tile passes, the statistics passes included, so a bar moves
    from the start; a batch's last pass counts once the caller has taken its tiles.
    Cancellation is checked before every pass of every batch. With `consistency`, each
    tile's output is back-projected toward its input (`backend.consistency.back_project`).
    """
    sample = statistics_sample(model, tiles)
    total = tile_passes(len(tiles), len(passes), has_group_norm(model))
    done = 0

    def reach(value: int) -> None:
        nonlocal done
        done = value
        if progress is not None:
            progress(done, total)

    statistics = []
    for channels in passes:
        before = done
        statistics.append(window_statistics(model, sample, lambda t, c=channels: model_input(read(t), c), device,
                                            batch, should_cancel, lambda n, b=before: reach(b + n)))
    for start in range(0, len(tiles), batch):
        chunk = tiles[start:start + batch]
        lr = np.stack([read(tile) for tile in chunk])
        hr: Optional[np.ndarray] = None
        for index, (channels, shared) in enumerate(zip(passes, statistics)):
            _check_cancel(should_cancel)
            inputs = model_input(lr, channels)
            output = _forward(model, inputs, device, shared).float()
            if consistency:
                output = back_project(output, torch.from_numpy(np.ascontiguousarray(inputs)).to(output.device),
                                      model.scale)
            output = output.cpu().numpy()
            if hr is None:
                hr = np.empty((len(chunk), lr.shape[1]) + output.shape[2:], dtype=np.float32)
            hr[:, list(channels)] = output if len(channels) == 3 else output.mean(axis=1, keepdims=True)
            if index < len(passes) - 1:
                reach(done + len(chunk))
        for tile, output in zip(chunk, hr):
            yield tile, output
            reach(done + 1)


def model_input(lr: np.ndarray, channels: tuple[int, ...]) -> np.ndarray:
    """The model's 3 input channels [..., 3, h, w] for a pass over `channels` of lr [..., C, h, w]:
    a triplet as it is, a single band replicated."""
    picked = np.take(lr, channels, axis=-3)
    return picked if len(channels) == 3 else np.repeat(picked, 3, axis=-3)


def statistics_tile_count(tiles: int, group_norm: bool) -> int:
    """How many tiles a pass samples for window-wide GroupNorm statistics: up to STATISTICS_TILES, none
    where there is nothing to share (one tile, or a model without GroupNorm)."""
    return min(tiles, STATISTICS_TILES) if tiles >= 2 and group_norm else 0


def statistics_sample(model: nn.Module, tiles: list[Tile]) -> list[Tile]:
    """The tiles whose GroupNorm statistics stand for the window's, spread evenly over it."""
    count = statistics_tile_count(len(tiles), has_group_norm(model))
    if not count:
        return []
    return [tiles[round(i * (len(tiles) - 1) / max(count - 1, 1))] for i in range(count)]


def window_statistics(model: nn.Module, sample: list[Tile], read: Callable[[Tile], np.ndarray],
                      device: torch.device, batch: int, should_cancel: Optional[ShouldCancel] = None,
                      on_tiles_done: Optional[Callable[[int], None]] = None) -> Optional[Statistics]:
    """GroupNorm statistics pooled over the `statistics_sample` tiles, or None for an empty sample.
    read(tile) gives the model's 3-channel input. Costs one model pass per sampled tile;
    on_tiles_done(n) follows each batch."""
    if not sample:
        return None
    with record_group_norm_statistics(model) as statistics:
        for start in range(0, len(sample), batch):
            _check_cancel(should_cancel)
            chunk = sample[start:start + batch]
            _forward(model, np.stack([read(tile) for tile in chunk]), device, None)
            if on_tiles_done is not None:
                on_tiles_done(start + len(chunk))
    return dict(statistics)


def _check_cancel(should_cancel: Optional[ShouldCancel]) -> None:
    if should_cancel is not None and should_cancel():
        raise Cancelled("cancelled")


def _forward(model: nn.Module, lr: np.ndarray, device: torch.device,
             statistics: Optional[Statistics]) -> torch.Tensor:
    """One model call on a batch [B, 3, h, w], normalising GroupNorms with `statistics` when given."""
    tensor = torch.from_numpy(np.ascontiguousarray(lr, dtype=np.float32)).to(device)
    if device.type == "cuda":
        tensor = tensor.contiguous(memory_format=torch.channels_last)
    shared = fixed_group_norm_statistics(model, statistics) if statistics else contextlib.nullcontext()
    with torch.inference_mode(), _autocast(device), shared:
        return model(tensor)


def super_resolve_array(model: nn.Module, lr01: np.ndarray, tile: int, overlap: int, batch: int = 4,
                        device: str = "cpu", passes: Sequence[tuple[int, ...]] = RGB_PASS,
                        consistency: bool = False) -> np.ndarray:
    """Tiled, blended inference on an in-memory [C, H, W] array in [0, 1] (passes as in `infer_tiles`);
    returns [C, H*s, W*s]."""
    channels, height, width = lr01.shape
    torch_device = torch.device(device)
    model = model.to(torch_device).eval()
    tiles = tile_grid(width, height, tile, overlap)
    read = lambda t: np.ascontiguousarray(lr01[:, t.y:t.y + t.height, t.x:t.x + t.width], dtype=np.float32)
    outputs = infer_tiles(model, tiles, read, torch_device, batch, passes=passes, consistency=consistency)
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
        """Validate a request against its input and output and say what it will produce.

        Everything that can be refused before compute is refused here: the input, its
        bands, the extent, the output path (a folder, an existing file, an unwritable or
        missing folder) and the disk space. `steps` assumes the student (GroupNorm
        statistics passes) unless the request names the bicubic baseline.
        """
        if source is None:
            with SourceRaster(request.input, request.bands) as opened:
                return self.plan(request, opened)
        check_output_path(request.output, request.input, request.overwrite)
        if request.normalisation:
            parse_spec(request.normalisation)
        passes = plan_passes(source.band_numbers, source.colours, request.rgb)
        window = source.window_for_extent(request.extent, request.extent_crs)
        dtype = np.dtype(np.float32 if request.output_dtype == "float32" else source.dtype)
        width, height = window.width * request.scale, window.height * request.scale
        bands = len(source.band_numbers)
        output_bytes = width * height * (bands * dtype.itemsize + (1 if source.needs_mask(dtype) else 0))
        folder = Path(request.output).resolve().parent
        free = shutil.disk_usage(folder).free
        if output_bytes > free:
            raise BadInput(f"the output ({width} x {height} px) needs up to {human_size(output_bytes)} but only "
                           f"{human_size(free)} is free in {folder}; free some space or choose another folder")
        tiles = len(tile_grid(window.width, window.height, request.tile, request.overlap))
        steps = tile_passes(tiles, len(passes), request.model != "bicubic")
        return RunPlan(width, height, bands, dtype.name, output_bytes, free, tiles, len(passes), steps, window)

    def run(self, request: RunRequest, progress: Optional[Progress] = None,
            should_cancel: Optional[ShouldCancel] = None, model: Optional[nn.Module] = None) -> RunResult:
        """Super-resolve the request's window into its output file.

        `model` overrides the request's weights (for tests and the Python API).
        Raises BadInput for requests that cannot run, Cancelled when
        `should_cancel` turns true; either way no output file is left.
        """
        started = time.perf_counter()
        with SourceRaster(request.input, request.bands) as source:
            plan = self.plan(request, source)
            device = self.device(request.device)
            if model is None:
                loaded = self.load_model(request)
            else:
                loaded = LoadedModel(model.to(device).eval(), type(model).__name__, None, None,
                                     (getattr(model, "meta", None) or {}).get("normalisation"))
            if loaded.module.scale != request.scale:
                raise BadInput(f"model {loaded.name} is x{loaded.module.scale}, not x{request.scale}")
            plan = replace(plan, steps=tile_passes(plan.tiles, plan.passes, has_group_norm(loaded.module)))
            for path in remove_stale_partials(request.output):
                log.info("removed %s, a partial output left by a process that no longer runs", path)
            passes = plan_passes(source.band_numbers, source.colours, request.rgb)
            normalisation, fill = self._normalisation(request, loaded, source, plan.window)
            log.info("input %s window %s -> output %s (%d x %d, %d band(s) in %d pass(es) %s, %s), %d tile(s), "
                     "normalisation %s", request.input, plan.window, request.output, plan.width, plan.height,
                     plan.bands, plan.passes, describe_passes(passes), plan.dtype, plan.tiles,
                     normalisation.describe())
            figures = self._write(request, source, plan, passes, loaded, normalisation, fill, device, progress,
                                  should_cancel)
        seconds = time.perf_counter() - started
        log.debug("wrote %s in %.1f s", request.output, seconds)
        return RunResult(request.output, seconds, plan.width, plan.height, plan.bands, str(device), loaded.name,
                         plan.tiles, plan.passes, plan.steps, figures)

    def _normalisation(self, request: RunRequest, loaded: LoadedModel, source: SourceRaster,
                       window: Window) -> tuple[Normalisation, np.ndarray]:
        """The run's normalisation, one per band, and the normalised value each band's invalid pixels get for
        inference (the window's median), both from one decimated read of the window."""
        spec = request.normalisation or loaded.normalisation or default_spec(source.dtype)
        channels = len(source.band_numbers)
        if parse_spec(spec)[0] == "fixed" and not source.may_be_invalid:
            return resolve(spec), np.full(channels, 0.5, np.float32)
        sample, valid = source.read_sample(window)
        normalisation = resolve(spec, sample, valid)
        normalised = normalisation.apply(sample)
        fill = [np.median(band[mask]) if mask.any() else 0.5 for band, mask in zip(normalised, valid)]
        return normalisation, np.array(fill, dtype=np.float32)

    def _write(self, request: RunRequest, source: SourceRaster, plan: RunPlan, passes: list[tuple[int, ...]],
               loaded: LoadedModel, normalisation: Normalisation, fill: np.ndarray, device: torch.device,
               progress: Optional[Progress], should_cancel: Optional[ShouldCancel]) -> dict[str, str]:
        window, scale = plan.window, request.scale
        out_dtype = np.dtype(plan.dtype)
        out_bands = source.output_bands(out_dtype)
        nodata = [band.nodata for band in out_bands]
        blender = StreamingBlender(window.width, window.height, request.tile, request.overlap, scale, plan.bands,
                                   exact=out_dtype.kind == "f")
        channel_passes = [tuple(source.band_numbers.index(band) for band in bands) for bands in passes]
        batch = 4 if device.type == "cuda" else 1

        def read(tile: Tile) -> np.ndarray:
            values, valid = source.read(Window(window.x + tile.x, window.y + tile.y, tile.width, tile.height))
            normalised = normalisation.apply(values)
            return normalised if valid.all() else np.where(valid, normalised, fill[:, None, None])

        metadata = {
            "SLIMDIFFSR_VERSION": __version__, "SLIMDIFFSR_MODEL": loaded.name,
            "SLIMDIFFSR_WEIGHTS": Path(loaded.weights).name if loaded.weights else "none",
            "SLIMDIFFSR_WEIGHTS_SHA256": loaded.sha256 or "none", "SLIMDIFFSR_SCALE": str(scale),
            "SLIMDIFFSR_NORMALISATION": normalisation.describe(),
            "SLIMDIFFSR_SOURCE": os.path.basename(request.input),
            "SLIMDIFFSR_SOURCE_WINDOW": f"{window.x},{window.y},{window.width},{window.height}",
            "SLIMDIFFSR_BANDS": ",".join(map(str, source.band_numbers)),
            "SLIMDIFFSR_PASSES": describe_passes(passes),
            "SLIMDIFFSR_CONSISTENCY": "back-projected to the input" if request.consistency else "off",
            "SLIMDIFFSR_NOTE": SYNTHESIS_NOTE,
        }
        with OutputRaster(request.output, plan.width, plan.height, out_dtype, source.output_geotransform(window, scale),
                          source.wkt, out_bands, source.needs_mask(out_dtype), metadata) as output:
            tiles = infer_tiles(loaded.module, blender.tiles, read, device, batch, should_cancel, progress,
                                channel_passes, request.consistency)
            for tile, hr in tiles:
                for block in blender.add(tile, hr):
                    _, h, w = block.values.shape
                    valid = None
                    if source.may_be_invalid:
                        lr_valid = source.read_valid(Window(window.x + block.x // scale, window.y + block.y // scale,
                                                            w // scale, h // scale))
                        valid = lr_valid.repeat(scale, axis=1).repeat(scale, axis=2)
                    restored = _avoid_nodata(normalisation.invert(block.values, out_dtype), valid, nodata)
                    output.write(block.x, block.y, restored, valid)
                if tile.column == blender.columns - 1:
                    release_free_memory()
            figures = _consistency_metadata(source, window, scale, output)
            output.add_metadata(figures)
            output.commit(request.overwrite)
        return figures


def _consistency_metadata(source: SourceRaster, window: Window, scale: int, output: OutputRaster) -> dict[str, str]:
    """The written output's consistency figures as metadata items; none when its centre holds no valid pixel."""
    try:
        figures = figures_of(source, window, scale, output.read)
    except ValueError as error:
        log.info("no consistency figures: %s", error)
        return {}
    for line in figures.describe():
        log.info("consistency: %s", line)
    return figures.to_metadata()


def tile_passes(tiles: int, passes: int, group_norm: bool) -> int:
    """The model passes over tiles a run makes (its progress total): every tile once per band pass, plus
    each pass's statistics sample for a model with GroupNorm."""
    return (tiles + statistics_tile_count(tiles, group_norm)) * passes


def describe_passes(passes: Sequence[tuple[int, ...]]) -> str:
    """Band passes for logs and metadata: "3,2,1;4" = bands 3,2,1 together, then band 4 alone."""
    return ";".join(",".join(map(str, bands)) for bands in passes)


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


def _avoid_nodata(values: np.ndarray, valid: Optional[np.ndarray], nodata: Sequence[Optional[float]]) -> np.ndarray:
    """Nudge valid pixels that came out equal to their band's nodata value, so they are not lost as nodata."""
    nudged = values
    for index, value in enumerate(nodata):
        if value is None or np.isnan(value):
            continue
        clash = values[index] == value
        if valid is not None:
            clash &= valid[index]
        if clash.any():
            if nudged is values:
                nudged = values.copy()
            nudged[index][clash] = _next_to(value, values.dtype)
    return nudged


def _next_to(value: float, dtype: np.dtype) -> float:
    """The value of `dtype` next to `value`, towards the middle of the type's range."""
    if dtype.kind == "f":
        return float(np.nextafter(dtype.type(value), dtype.type(0 if value > 0 else 1)))
    return value + 1 if value < np.iinfo(dtype).max else value - 1
