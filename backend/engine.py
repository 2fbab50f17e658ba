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
import math
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Optional, Sequence

import numpy as np
import torch
from torch import nn

from slimdiffsr_qgis.contract import DEFAULT_TILE, BadInput, Cancelled, RunRequest, human_size

from . import __version__
from .bands import plan_passes
from .check import figures_of
from .consistency import back_project
from .models.bicubic import BicubicUpscaler
from .models.norm_statistics import Statistics, fixed_group_norm_statistics, has_group_norm, record_group_norm_statistics
from .models.weights import file_sha256
from .normalisation import Normalisation, default_spec, parse_spec, resolve
from .raster import (OutputRaster, SourceRaster, Window, check_output_path, copy_rows, remove_file,
                     remove_stale_partials, set_block_cache)
from .resources import default_weights_path
from .stages import Consume, Prefetch
from .models.error_head import head_beside, median_maps
from .uncertainty import error_raster, load_error_head, to_output_units
from .tiling import StreamingBlender, Tile, blend_in_memory, choose_tile, tile_grid

log = logging.getLogger("slimdiffsr")

# Tiles sampled for window-wide GroupNorm statistics, and their largest side: enough to stand for the
# window (measured with benchmarks/seam.py), few and small enough to add little to a run (docs/performance.md).
STATISTICS_TILES = 8
STATISTICS_TILE_SIDE = 128

# Memory a tile's activations may take on a CPU: the compact x4 student at its largest tile then peaks
# under 1 GiB resident with the rest of the run (docs/performance.md).
CPU_TILE_MEMORY = 512 * 2**20
# Share of a GPU's free memory a tile batch's activations may take (a batch holds up to 4 tiles).
CUDA_TILE_MEMORY_FRACTION = 0.15
# Live tensors of vae_channels floats per output pixel at the student's peak (measured: compact x4, fp32,
# with the decoder's output-size tail in stripes, backend/models/vae.py: 326 MiB above the process at 256²).
HR_FEATURE_TENSORS = 2.6

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
    tile: int  # the LR tile side the run uses (the request's, or chosen: `run_tile`)


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
    uncertainty: Optional[str]
    """The uncertainty layer written beside the output, if the request asked for one."""


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
                batch: int, should_cancel: Optional[ShouldCancel] = None, progress: Optional[Callable[[int], None]] = None,
                passes: Sequence[tuple[int, ...]] = RGB_PASS, consistency: bool = False,
                statistics: Optional[Sequence[Optional[Statistics]]] = None,
                error_head: Optional[nn.Module] = None) -> Iterator[tuple[Tile, np.ndarray]]:
    """Run `model` over tiles in batches, yielding each tile's HR output [C, h*s, w*s] as float32.

    read(tile) gives the tile's model input [C, h, w] in [0, 1]; it runs in a reader thread a few
    batches ahead (`backend.stages.Prefetch`), so reading and normalising overlap the model. Each pass
    feeds the model the channels it names: three together (a colour triplet), or one replicated to the
    model's three channels, whose output is the mean of the three output channels. All passes of a batch
    run before it is yielded, so every output tile is whole and is blended and written once.
    `statistics` holds each pass's shared GroupNorm statistics (`pass_statistics`); None lets every
    tile normalise by its own content. progress(n) is called after each tile pass (a batch's last pass
    counts once the caller has taken its tiles). Cancellation is checked before every pass of every
    batch. With `consistency`, each tile's output is back-projected toward its input. With an
    `error_head`, C more channels follow the output: each band's median absolute error (model units),
    the map the head predicts for the band's pass.
    """
    shared = list(statistics) if statistics is not None else [None] * len(passes)
    step = progress or (lambda n: None)
    chunks = [tiles[start:start + batch] for start in range(0, len(tiles), batch)]
    reader = Prefetch((chunk, np.stack([read(tile) for tile in chunk])) for chunk in chunks)
    try:
        for chunk, lr in reader:
            hr: Optional[np.ndarray] = None
            for index, (channels, pass_statistics_) in enumerate(zip(passes, shared)):
                _check_cancel(should_cancel)
                inputs = model_input(lr, channels)
                output = _forward(model, inputs, device, pass_statistics_).float()
                lr_tensor = torch.from_numpy(np.ascontiguousarray(inputs)).to(output.device)
                if consistency:
                    output = back_project(output, lr_tensor, model.scale)
                errors = None if error_head is None else median_maps(error_head, lr_tensor, output).cpu().numpy()
                output = output.cpu().numpy()
                if hr is None:
                    planes = lr.shape[1] * (1 if error_head is None else 2)
                    hr = np.empty((len(chunk), planes) + output.shape[2:], dtype=np.float32)
                hr[:, list(channels)] = output if len(channels) == 3 else output.mean(axis=1, keepdims=True)
                if errors is not None:
                    hr[:, [lr.shape[1] + channel for channel in channels]] = errors
                if index < len(passes) - 1:
                    step(len(chunk))
            for tile, output in zip(chunk, hr):
                yield tile, output
                step(1)
    finally:
        reader.close()


def model_input(lr: np.ndarray, channels: tuple[int, ...]) -> np.ndarray:
    """The model's 3 input channels [..., 3, h, w] for a pass over `channels` of lr [..., C, h, w]:
    a triplet as it is, a single band replicated."""
    picked = np.take(lr, channels, axis=-3)
    return picked if len(channels) == 3 else np.repeat(picked, 3, axis=-3)


def statistics_sample(width: int, height: int, tile: int, tiles: int, group_norm: bool) -> list[Tile]:
    """The tiles whose pooled GroupNorm statistics stand for a window's: none where there is nothing to
    share (one tile, or a model without GroupNorm); else up to STATISTICS_TILES tiles of at most
    STATISTICS_TILE_SIDE, spread evenly over a grid that covers the window without overlap (so a small
    window is sampled whole)."""
    if tiles < 2 or not group_norm:
        return []
    grid = tile_grid(width, height, min(tile, STATISTICS_TILE_SIDE), 0)
    count = min(len(grid), STATISTICS_TILES)
    return [grid[round(i * (len(grid) - 1) / max(count - 1, 1))] for i in range(count)]


def window_statistics(model: nn.Module, sample: list[Tile], read: Callable[[Tile], np.ndarray],
                      device: torch.device, batch: int, should_cancel: Optional[ShouldCancel] = None,
                      on_tiles_done: Optional[Callable[[int], None]] = None) -> Optional[Statistics]:
    """GroupNorm statistics pooled over the sampled tiles, or None for an empty sample.
    read(tile) gives the model's 3-channel input. Costs one model pass per sampled tile;
    on_tiles_done(n) follows each batch with the n tiles it passed."""
    if not sample:
        return None
    with record_group_norm_statistics(model) as statistics:
        for start in range(0, len(sample), batch):
            _check_cancel(should_cancel)
            chunk = sample[start:start + batch]
            _forward(model, np.stack([read(tile) for tile in chunk]), device, None)
            if on_tiles_done is not None:
                on_tiles_done(len(chunk))
    return dict(statistics)


def pass_statistics(model: nn.Module, sample: list[Tile], read: Callable[[Tile], np.ndarray],
                    passes: Sequence[tuple[int, ...]], device: torch.device, batch: int,
                    should_cancel: Optional[ShouldCancel] = None,
                    on_tiles_done: Optional[Callable[[int], None]] = None) -> tuple[Optional[Statistics], ...]:
    """Each band pass's window-wide GroupNorm statistics: each pass feeds the model different content.

    A model with GroupNorm normalises every tile with statistics of the whole window, not of the tile
    itself: per-tile statistics were nearly all of the difference between a tiled run and a single pass
    (backend/models/norm_statistics.py)."""
    return tuple(window_statistics(model, sample, lambda t, c=channels: model_input(read(t), c), device, batch,
                                   should_cancel, on_tiles_done) for channels in passes)


def _check_cancel(should_cancel: Optional[ShouldCancel]) -> None:
    if should_cancel is not None and should_cancel():
        raise Cancelled("cancelled")


def _forward(model: nn.Module, lr: np.ndarray, device: torch.device,
             statistics: Optional[Statistics]) -> torch.Tensor:
    """One model call on a batch [B, 3, h, w], normalising GroupNorms with `statistics` when given."""
    tensor = torch.from_numpy(np.ascontiguousarray(lr, dtype=np.float32)).to(device)
    if device.type == "cuda":  # the student goes channels-last itself on a CPU, where other models may not gain
        tensor = tensor.contiguous(memory_format=torch.channels_last)
    shared = fixed_group_norm_statistics(model, statistics) if statistics else contextlib.nullcontext()
    with torch.inference_mode(), _autocast(device), shared:
        return model(tensor)


def super_resolve_array(model: nn.Module, lr01: np.ndarray, tile: int, overlap: int, batch: int = 4,
                        device: str = "cpu", passes: Sequence[tuple[int, ...]] = RGB_PASS,
                        consistency: bool = False) -> np.ndarray:
    """Tiled, blended inference on an in-memory [C, H, W] array in [0, 1] (passes as in `infer_tiles`,
    statistics as in a raster run); returns [C, H*s, W*s]."""
    channels, height, width = lr01.shape
    torch_device = torch.device(device)
    model = model.to(torch_device).eval()
    tiles = tile_grid(width, height, tile, overlap)
    read = lambda t: np.ascontiguousarray(lr01[:, t.y:t.y + t.height, t.x:t.x + t.width], dtype=np.float32)
    sample = statistics_sample(width, height, tile, len(tiles), has_group_norm(model))
    statistics = pass_statistics(model, sample, read, passes, torch_device, batch)
    outputs = infer_tiles(model, tiles, read, torch_device, batch, passes=passes, consistency=consistency,
                          statistics=statistics)
    return blend_in_memory(width, height, tile, overlap, model.scale, channels, outputs)


def largest_tile(module: nn.Module, device: torch.device) -> Optional[int]:
    """The largest LR tile side whose activations fit the device's tile memory, for a student model
    (None for other models: their memory is unknown, so the request's tile stands).

    Estimated from the decoder's width: its HR-size features dominate (measured on the compact x4 preset,
    fp32: about HR_FEATURE_TENSORS tensors of vae_channels floats per output pixel live at the peak).
    """
    config = getattr(module, "config", None)
    channels = getattr(config, "vae_channels", None)
    if channels is None:
        return None
    per_output_pixel = channels * 4 * HR_FEATURE_TENSORS
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        budget, per_output_pixel = free * CUDA_TILE_MEMORY_FRACTION, per_output_pixel / 2  # half-precision autocast
    else:
        budget = CPU_TILE_MEMORY
    side = int(math.sqrt(budget / per_output_pixel)) // module.scale
    multiple = getattr(config, "lr_multiple", 1)
    return max(multiple, side - side % multiple)


def run_tile(request: RunRequest, module: nn.Module, device: torch.device, window: Window) -> int:
    """The tile side a run uses: the request's, or, when it leaves the contract's default, the side that
    covers this window with the fewest model pixels within the device's tile memory (`choose_tile`), never
    below the default: smaller tiles depart further from a single pass (the student's QGAM and borders see
    less: mean 0.57/255 at 168 px against 0.18/255 at 256, docs/performance.md)."""
    largest = largest_tile(module, device)
    if request.tile != DEFAULT_TILE or largest is None:
        return request.tile
    multiple = getattr(getattr(module, "config", None), "lr_multiple", 1)
    return choose_tile(window.width, window.height, request.overlap, max(largest, DEFAULT_TILE), multiple,
                       smallest=DEFAULT_TILE)


@dataclass(frozen=True)
class Prepared:
    """What a run computes once for its whole window and every part of it shares: the tile side, the
    normalisation, the value invalid pixels are filled with, and each band pass's GroupNorm statistics.
    Picklable, so a cluster's window tasks get the very values a single-machine run uses."""

    plan: RunPlan
    tile: int
    normalisation: Normalisation
    fill: np.ndarray
    statistics: tuple[Optional[Statistics], ...]


class _Steps:
    """The run's progress: counts model passes over tiles and reports (done, total)."""

    def __init__(self, total: int, progress: Optional[Progress], start: int = 0):
        self.done, self.total, self._progress = start, total, progress

    def __call__(self, count: int) -> None:
        self.done += count
        if self._progress is not None:
            self._progress(self.done, self.total)


class Engine:
    """Loads models once and runs requests against rasters."""

    def __init__(self, block_cache_mb: int = 64, compile_model: bool = False):
        set_block_cache(block_cache_mb)
        share_one_heap()
        self.compile_model = compile_model
        self._models: dict[tuple, LoadedModel] = {}
        self._devices: dict[str, torch.device] = {}
        self._heads: dict[tuple, nn.Module] = {}

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

    def _model_for(self, request: RunRequest, model: Optional[nn.Module]) -> LoadedModel:
        """The request's loaded model, or `model` (tests, the Python API) on the request's device."""
        if model is None:
            return self.load_model(request)
        loaded = LoadedModel(model.to(self.device(request.device)).eval(), type(model).__name__, None, None,
                             (getattr(model, "meta", None) or {}).get("normalisation"))
        if loaded.module.scale != request.scale:
            raise BadInput(f"model {loaded.name} is x{loaded.module.scale}, not x{request.scale}")
        return loaded

    def plan(self, request: RunRequest, source: Optional[SourceRaster] = None,
             model: Optional[nn.Module] = None) -> RunPlan:
        """Validate a request against its input and output and say what it will produce.

        Everything that can be refused before compute is refused here: the input, its
        bands, the extent, the output path (a folder, an existing file, an unwritable or
        missing folder) and the disk space. The tiles follow the model (its tile memory,
        whether it has GroupNorm statistics to share), so planning loads the request's model.
        """
        if source is None:
            with SourceRaster(request.input, request.bands) as opened:
                return self.plan(request, opened, model)
        check_output_path(request.output, request.input, request.overwrite)
        if request.uncertainty:
            check_output_path(request.uncertainty, request.input, request.overwrite)
        if request.normalisation:
            parse_spec(request.normalisation)
        passes = plan_passes(source.band_numbers, source.colours, request.rgb)
        window = source.window_for_extent(request.extent, request.extent_crs)
        dtype = np.dtype(np.float32 if request.output_dtype == "float32" else source.dtype)
        width, height = window.width * request.scale, window.height * request.scale
        bands = len(source.band_numbers)
        output_bytes = width * height * (bands * dtype.itemsize + (1 if source.needs_mask(dtype) else 0)
                                         + (bands * 4 if request.uncertainty else 0))
        folder = Path(request.output).resolve().parent
        free = shutil.disk_usage(folder).free
        if output_bytes > free:
            raise BadInput(f"the output ({width} x {height} px) needs up to {human_size(output_bytes)} but only "
                           f"{human_size(free)} is free in {folder}; free some space or choose another folder")
        loaded = self._model_for(request, model)
        module = loaded.module
        if request.uncertainty:
            self.error_head(request, loaded)
        tile = run_tile(request, module, self.device(request.device), window)
        tiles = len(tile_grid(window.width, window.height, tile, request.overlap))
        sample = statistics_sample(window.width, window.height, tile, tiles, has_group_norm(module))
        steps = (tiles + len(sample)) * len(passes)
        return RunPlan(width, height, bands, dtype.name, output_bytes, free, tiles, len(passes), steps, window, tile)

    def prepare(self, request: RunRequest, progress: Optional[Progress] = None,
                should_cancel: Optional[ShouldCancel] = None, model: Optional[nn.Module] = None,
                source: Optional[SourceRaster] = None) -> Prepared:
        """Plan the request and compute what all its tiles share (see `Prepared`); progress counts the
        statistics passes, the first steps of the run's total."""
        if source is None:
            with SourceRaster(request.input, request.bands) as opened:
                return self.prepare(request, progress, should_cancel, model, opened)
        plan = self.plan(request, source, model)
        loaded = self._model_for(request, model)
        device = self.device(request.device)
        for path in remove_stale_partials(request.output):
            log.info("removed %s, a partial output left by a process that no longer runs", path)
        passes = plan_passes(source.band_numbers, source.colours, request.rgb)
        normalisation, fill = self._normalisation(request, loaded, source, plan.window)
        log.info("input %s window %s -> output %s (%d x %d, %d band(s) in %d pass(es) %s, %s), %d tile(s) of %d px, "
                 "normalisation %s", request.input, plan.window, request.output, plan.width, plan.height,
                 plan.bands, plan.passes, describe_passes(passes), plan.dtype, plan.tiles, plan.tile,
                 normalisation.describe())
        sample = statistics_sample(plan.window.width, plan.window.height, plan.tile, plan.tiles,
                                   has_group_norm(loaded.module))
        read = _tile_reader(source, plan.window, normalisation, fill)
        channel_passes = [tuple(source.band_numbers.index(band) for band in bands) for bands in passes]
        statistics = pass_statistics(loaded.module, sample, lambda tile: read(tile)[0], channel_passes, device,
                                     _batch(device), should_cancel, _Steps(plan.steps, progress))
        return Prepared(plan, plan.tile, normalisation, fill, statistics)

    def run(self, request: RunRequest, progress: Optional[Progress] = None,
            should_cancel: Optional[ShouldCancel] = None, model: Optional[nn.Module] = None) -> RunResult:
        """Super-resolve the request's window into its output file.

        `model` overrides the request's weights (for tests and the Python API).
        Raises BadInput for requests that cannot run, Cancelled when
        `should_cancel` turns true; either way no output file is left.
        """
        started = time.perf_counter()
        with SourceRaster(request.input, request.bands) as source:
            prepared = self.prepare(request, progress, should_cancel, model, source)
            loaded = self._model_for(request, model)
            plan = prepared.plan
            head = self.error_head(request, loaded) if request.uncertainty else None
            with self._output(request, source, prepared, loaded, request.output) as output, \
                    self._error_output(request, source, prepared, loaded) as errors:
                self._write_rows(request, source, prepared, loaded, output, 0, None, progress, should_cancel,
                                 errors=errors, error_head=head)
                figures = _consistency_metadata(source, plan.window, request.scale, output)
                output.add_metadata(figures)
                if errors is not None:
                    errors.commit(request.overwrite)
                try:
                    output.commit(request.overwrite)
                except BaseException:
                    if request.uncertainty:
                        remove_file(request.uncertainty)
                    raise
        seconds = time.perf_counter() - started
        log.debug("wrote %s in %.1f s", request.output, seconds)
        return RunResult(request.output, seconds, plan.width, plan.height, plan.bands,
                         str(self.device(request.device)), loaded.name, plan.tiles, plan.passes, plan.steps, figures,
                         request.uncertainty)

    def run_window(self, request: RunRequest, prepared: Prepared, first_row: int, stop_row: int, part: str,
                   progress: Optional[Callable[[int], None]] = None,
                   should_cancel: Optional[ShouldCancel] = None) -> tuple[int, int]:
        """Write the output rows that tile rows first_row..stop_row-1 finish to the GeoTIFF `part`
        (the output's full width, those rows only); returns their (y, height) in output pixels.

        The tiles above whose outputs those rows also blend (the halo) run again here, so every value
        is the sum a whole run makes, in its order (`StreamingBlender.window_rows`). progress(n)
        follows each tile pass. A failure or cancel leaves no part file.
        """
        if request.uncertainty:
            raise BadInput("an uncertainty layer is not written by windows on a cluster yet; run this scene on "
                           "one machine for it, or without --uncertainty")
        loaded = self.load_model(request)
        with SourceRaster(request.input, request.bands) as source:
            blender = _blender(request, prepared)
            lr_y0, lr_y1, halo = blender.window_rows(first_row, stop_row)
            scale = request.scale
            with self._output(request, source, prepared, loaded, part, height=(lr_y1 - lr_y0) * scale) as output:
                self._write_rows(request, source, prepared, loaded, output, lr_y0 * scale, (halo, stop_row),
                                 progress, should_cancel, stop_at=lr_y1 * scale)
                output.commit(overwrite=True)
        return lr_y0 * scale, (lr_y1 - lr_y0) * scale

    def assemble(self, request: RunRequest, prepared: Prepared, parts: Sequence[tuple[str, int, int]],
                 seconds: float = 0.0) -> RunResult:
        """Copy window parts [(path, y, height)] into the request's output, score and commit it, and delete
        the parts; the result is the file a single-machine run writes."""
        loaded = self.load_model(request)
        plan = prepared.plan
        started = time.perf_counter()
        with SourceRaster(request.input, request.bands) as source:
            with self._output(request, source, prepared, loaded, request.output) as output:
                for path, y, height in sorted(parts, key=lambda part: part[1]):
                    copy_rows(path, output, y)
                figures = _consistency_metadata(source, plan.window, request.scale, output)
                output.add_metadata(figures)
                output.commit(request.overwrite)
        for path, _, _ in parts:
            remove_file(path)
        return RunResult(request.output, seconds + time.perf_counter() - started, plan.width, plan.height,
                         plan.bands, str(self.device(request.device)), loaded.name, plan.tiles, plan.passes,
                         plan.steps, figures, None)

    def error_head(self, request: RunRequest, loaded: LoadedModel) -> nn.Module:
        """The error head beside the request's weights (loaded once, checked against the run's output)."""
        key = (loaded.weights, loaded.sha256, request.consistency, request.device)
        if key not in self._heads:
            self._heads[key] = load_error_head(request, loaded.weights, loaded.sha256, self.device(request.device))
        return self._heads[key]

    def _error_output(self, request: RunRequest, source: SourceRaster, prepared: Prepared,
                      loaded: LoadedModel) -> contextlib.AbstractContextManager[Optional[OutputRaster]]:
        """The uncertainty GeoTIFF the request asks for, or a context holding None."""
        if not request.uncertainty:
            return contextlib.nullcontext(None)
        plan = prepared.plan
        return error_raster(request.uncertainty, request, source, plan.window, plan.width, plan.height,
                            head_beside(loaded.weights).name, self.error_head(request, loaded))

    def _output(self, request: RunRequest, source: SourceRaster, prepared: Prepared, loaded: LoadedModel,
                path: str, height: Optional[int] = None) -> OutputRaster:
        """The output file (or a window's part of it, `height` rows from the window's top) with its metadata."""
        plan, window, scale = prepared.plan, prepared.plan.window, request.scale
        out_dtype = np.dtype(plan.dtype)
        passes = plan_passes(source.band_numbers, source.colours, request.rgb)
        metadata = {
            "SLIMDIFFSR_VERSION": __version__, "SLIMDIFFSR_MODEL": loaded.name,
            "SLIMDIFFSR_WEIGHTS": Path(loaded.weights).name if loaded.weights else "none",
            "SLIMDIFFSR_WEIGHTS_SHA256": loaded.sha256 or "none", "SLIMDIFFSR_SCALE": str(scale),
            "SLIMDIFFSR_NORMALISATION": prepared.normalisation.describe(),
            "SLIMDIFFSR_SOURCE": os.path.basename(request.input),
            "SLIMDIFFSR_SOURCE_WINDOW": f"{window.x},{window.y},{window.width},{window.height}",
            "SLIMDIFFSR_BANDS": ",".join(map(str, source.band_numbers)),
            "SLIMDIFFSR_PASSES": describe_passes(passes),
            "SLIMDIFFSR_TILE": f"{prepared.tile},{request.overlap}",
            "SLIMDIFFSR_CONSISTENCY": "back-projected to the input" if request.consistency else "off",
            "SLIMDIFFSR_NOTE": SYNTHESIS_NOTE,
        }
        return OutputRaster(path, plan.width, plan.height if height is None else height, out_dtype,
                            source.output_geotransform(window, scale), source.wkt, source.output_bands(out_dtype),
                            source.needs_mask(out_dtype), metadata)

    def _write_rows(self, request: RunRequest, source: SourceRaster, prepared: Prepared, loaded: LoadedModel,
                    output: OutputRaster, top: int, rows: Optional[tuple[int, int]],
                    progress: Optional[Progress | Callable[[int], None]], should_cancel: Optional[ShouldCancel],
                    stop_at: Optional[int] = None, errors: Optional[OutputRaster] = None,
                    error_head: Optional[nn.Module] = None) -> None:
        """Run the tiles of tile rows `rows` (all when None) and write the output rows top..stop_at-1 they
        finish to `output`, shifted up by `top`. Reading, the model, and blending with writing run
        in three threads (`backend.stages`)."""
        plan, window, scale = prepared.plan, prepared.plan.window, request.scale
        device = self.device(request.device)
        blender = _blender(request, prepared, error_head is not None)
        tiles = blender.tiles if rows is None else [t for t in blender.tiles if rows[0] <= t.row < rows[1]]
        out_dtype = np.dtype(plan.dtype)
        nodata = [band.nodata for band in source.output_bands(out_dtype)]
        passes = plan_passes(source.band_numbers, source.colours, request.rgb)
        channel_passes = [tuple(source.band_numbers.index(band) for band in bands) for bands in passes]
        read = _tile_reader(source, window, prepared.normalisation, prepared.fill)
        validity: dict[Tile, np.ndarray] = {}
        end = plan.height if stop_at is None else stop_at

        def read_tile(tile: Tile) -> np.ndarray:
            values, valid = read(tile)
            if source.may_be_invalid:
                validity[tile] = valid
            return values

        def write(item: tuple[Tile, np.ndarray]) -> None:
            tile, hr = item
            valid_lr = validity.pop(tile, None)
            for block in blender.add(tile, hr):
                _, h, w = block.values.shape
                if not top <= block.y < end:
                    continue
                valid = None
                if valid_lr is not None:
                    x0, y0 = block.x // scale - tile.x, block.y // scale - tile.y
                    valid = valid_lr[:, y0:y0 + h // scale, x0:x0 + w // scale]
                    valid = valid.repeat(scale, axis=1).repeat(scale, axis=2)
                values = block.values[:plan.bands]
                restored = _avoid_nodata(prepared.normalisation.invert(values, out_dtype), valid, nodata)
                output.write(block.x, block.y - top, restored, valid)
                if errors is not None:
                    expected = to_output_units(block.values[plan.bands:], prepared.normalisation)
                    if valid is not None:
                        expected[~valid] = np.nan
                    errors.write(block.x, block.y - top, expected)
            if tile.column == blender.columns - 1:
                release_free_memory()

        steps = progress if rows is not None else _Steps(plan.steps, progress, plan.steps - plan.tiles * plan.passes)
        writer: Consume[tuple[Tile, np.ndarray]] = Consume(write)
        try:
            for item in infer_tiles(loaded.module, tiles, read_tile, device, _batch(device), should_cancel, steps,
                                    channel_passes, request.consistency, prepared.statistics, error_head):
                writer.put(item)
            writer.finish()
        finally:
            writer.close()

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


def _batch(device: torch.device) -> int:
    """Tiles per model call: a GPU needs several to be busy; a CPU gains nothing from them but memory."""
    return 4 if device.type == "cuda" else 1


def _blender(request: RunRequest, prepared: Prepared, with_errors: bool = False) -> StreamingBlender:
    """The run's blender: the output's bands, followed by their expected errors when an error head runs."""
    window, plan = prepared.plan.window, prepared.plan
    return StreamingBlender(window.width, window.height, prepared.tile, request.overlap, request.scale,
                            plan.bands * (2 if with_errors else 1), exact=np.dtype(plan.dtype).kind == "f")


def _tile_reader(source: SourceRaster, window: Window, normalisation: Normalisation,
                 fill: np.ndarray) -> Callable[[Tile], tuple[np.ndarray, np.ndarray]]:
    """read(tile) -> (model input [C, h, w] in [0, 1] with invalid pixels filled, validity [C, h, w])."""
    def read(tile: Tile) -> tuple[np.ndarray, np.ndarray]:
        values, valid = source.read(Window(window.x + tile.x, window.y + tile.y, tile.width, tile.height))
        normalised = normalisation.apply(values)
        return (normalised if valid.all() else np.where(valid, normalised, fill[:, None, None])), valid
    return read


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


def share_one_heap() -> None:
    """Let every thread allocate from glibc's main heap (glibc only).

    By default the reader and writer threads each get a heap of their own, and each keeps the tile
    buffers it has freed: measured on a 2048² run, peak resident memory fell from 943 to 818-890 MiB
    with one heap, at the same speed.
    """
    if _LIBC is not None and hasattr(_LIBC, "mallopt"):
        _LIBC.mallopt(M_ARENA_MAX, 1)


_LIBC = _load_libc()
M_ARENA_MAX = -8
"""glibc's mallopt parameter for the most heaps (arenas) threads may spread over (malloc.h)."""


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
