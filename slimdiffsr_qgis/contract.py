"""The contract between every entry point and the backend: request fields, names, errors, partial files.

One dependency-free module (no torch, no GDAL, no QGIS) that the CLI, the server,
the engine, the QGIS plugin and the benchmarks all import, so a request is
checked in one place and every entry point gives the same message for the same
mistake. It lives in the plugin package because the plugin zip must carry it;
the backend wheel carries the same package.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Optional

PROTOCOL_VERSION = 2
SUPPORTED_SCALES = (2, 4, 8)
DEVICES = ("auto", "cpu", "cuda")
OUTPUT_DTYPES = ("same", "float32")
BUILT_IN_MODELS = ("bicubic",)

# Protocol ops a client sends; the queued ones run one at a time in arrival order.
OPS = ("run", "plan", "cancel", "ping", "info", "shutdown")
QUEUED_OPS = ("run", "plan")
# Events the backend sends; a request waits for exactly one terminal event.
EVENTS = ("hello", "progress", "result", "error", "plan", "pong", "info", "bye")
TERMINAL_EVENTS = ("result", "error", "plan", "pong", "info", "bye")

# Error kinds in `error` events (and the CLI's exit codes for them).
KIND_BAD_INPUT = "bad_input"
KIND_CANCELLED = "cancelled"
KIND_INTERNAL = "internal"
KIND_OUT_OF_MEMORY = "out_of_memory"
KIND_PROTOCOL = "protocol"
KIND_MISSING_DEPENDENCY = "missing_dependency"
ERROR_KINDS = (KIND_BAD_INPUT, KIND_CANCELLED, KIND_INTERNAL, KIND_OUT_OF_MEMORY, KIND_PROTOCOL,
               KIND_MISSING_DEPENDENCY)

# Largest integer an id, a tile or a band number may be: beyond it a value is a mistake, not a request.
LARGEST_INTEGER = 2**31 - 1
# Back-projection to the input by default: on the real cross-resolution pairs (Sentinel-2 B8A->B8, Landsat 8
# RGB->PAN) it turns the shipped x4 weights from 0.8-4 dB behind GDAL lanczos to 0.1-0.7 dB ahead, and on
# single bands the model was not trained on (Sentinel-2 NIR over water) it keeps their radiometry; it
# costs 0.57 dB on synthetic Real-ESRGAN-degraded LR, whose noise it keeps (resources/weights/README.md).
DEFAULT_CONSISTENCY = True
# Tile side in LR pixels; left at this value, the engine chooses the side for the window and the device.
DEFAULT_TILE = 256
# Tile overlap in LR pixels: tiled output departs from one pass by a mean 0.26/255 along tile borders at 16
# (0.14/255 at 32, 0.34/255 at 8; docs/performance.md), and each halving of it lets a raster be covered by
# fewer, larger tiles.
DEFAULT_OVERLAP = 16


class SlimDiffSRError(Exception):
    """Base class; `kind` names the error in protocol `error` events, `exit_code` in the CLI."""

    kind = KIND_INTERNAL
    exit_code = 1


class BadInput(SlimDiffSRError):
    """The request cannot be run as given; the message names the bad input and what to do about it."""

    kind = KIND_BAD_INPUT
    exit_code = 2


class Cancelled(SlimDiffSRError):
    """The caller asked to stop (cancel, Ctrl-C, SIGTERM); no output is left."""

    kind = KIND_CANCELLED
    exit_code = 130


@dataclass
class RunRequest:
    """One run: read `input` (window `extent`), super-resolve by `scale`, write `output`.

    input: a raster path, GDAL connection string (NETCDF:"f.nc":red) or /vsi path.
    extent: (xmin, ymin, xmax, ymax) in map units of `extent_crs` (any CRS GDAL
        understands: WKT, "EPSG:4326", ...), or of the raster's CRS when None;
        None means the whole raster.
    bands: 1-based input bands written to the output, in this order; None means
        every band of the input.
    rgb: three of the written bands that go through the model together as a
        colour triplet; None lets the backend choose (the bands whose colour
        interpretation is red, green, blue, else 1,2,3 of a 3- or 4-band raster).
        Every other band goes through the model alone, replicated to its three channels.
    weights: a safetensors file; None means the shipped default weights.
    model: "bicubic" for the labelled classical baseline; None for the student.
    normalisation: None (the weights' recorded normalisation, else uint8 -> /255
        and other types -> 2-98 % percentile stretch), "fixed:LO,HI" or
        "percentile:PLO,PHI".
    tile, overlap: LR pixels.
    consistency: make the output, reduced to the input grid, reproduce the input
        (back-projection per tile); the figures are measured and recorded either way.
    uncertainty: a GeoTIFF path for the median absolute error expected of every
        output pixel (float32, one band per output band, in the output's units), from the
        error head shipped beside the weights; None writes none.
    """

    input: str
    output: str
    scale: int = 4
    extent: Optional[tuple[float, float, float, float]] = None
    extent_crs: Optional[str] = None
    bands: Optional[tuple[int, ...]] = None
    rgb: Optional[tuple[int, int, int]] = None
    weights: Optional[str] = None
    model: Optional[str] = None
    device: str = "auto"
    tile: int = DEFAULT_TILE
    overlap: int = DEFAULT_OVERLAP
    normalisation: Optional[str] = None
    output_dtype: str = "same"
    overwrite: bool = False
    consistency: bool = DEFAULT_CONSISTENCY
    uncertainty: Optional[str] = None

    def __post_init__(self) -> None:
        self.input = _path("input", self.input)
        self.output = _path("output", self.output)
        self.scale = integer("scale", self.scale)
        if self.scale not in SUPPORTED_SCALES:
            raise BadInput(f"scale {self.scale} is not supported; use one of {', '.join(map(str, SUPPORTED_SCALES))}")
        if self.extent is not None:
            self.extent = _extent(self.extent)
        self.extent_crs = _optional_text("extent_crs", self.extent_crs)
        if self.bands is not None:
            self.bands = _band_list("bands", self.bands)
        if self.rgb is not None:
            self.rgb = _band_list("rgb", self.rgb)
            if len(self.rgb) != 3:
                raise BadInput(f"rgb names the colour triplet: give exactly 3 bands, got {len(self.rgb)}")
            if self.bands is not None and not set(self.rgb) <= set(self.bands):
                raise BadInput(f"rgb bands {list(self.rgb)} must be among the written bands {list(self.bands)}")
        self.weights = _optional_text("weights", self.weights)
        self.model = _optional_text("model", self.model)
        if self.model is not None and self.model not in BUILT_IN_MODELS:
            raise BadInput(f"unknown model {self.model!r}; the only built-in model is 'bicubic' (a classical baseline)")
        self.device = _choice("device", self.device, DEVICES)
        self.tile = integer("tile", self.tile)
        self.overlap = integer("overlap", self.overlap)
        if self.tile < 16:
            raise BadInput(f"tile size {self.tile} is too small; use at least 16 LR pixels")
        if not 0 <= self.overlap < self.tile // 2:
            raise BadInput(f"overlap {self.overlap} must be >= 0 and less than half the tile size ({self.tile})")
        self.normalisation = _optional_text("normalisation", self.normalisation)
        self.uncertainty = _optional_text("uncertainty", self.uncertainty)
        if self.uncertainty is not None and os.path.abspath(self.uncertainty) == os.path.abspath(self.output):
            raise BadInput(f"the uncertainty layer {self.uncertainty} and the output must be different files")
        self.output_dtype = _choice("output_dtype", self.output_dtype, OUTPUT_DTYPES)
        for name in ("overwrite", "consistency"):
            if not isinstance(getattr(self, name), bool):
                raise BadInput(f"{name} must be true or false, got {_show(getattr(self, name))}")

    @classmethod
    def from_dict(cls, data: Any) -> "RunRequest":
        """Build from a protocol/JSON object; unknown keys are an error, not ignored."""
        if not isinstance(data, dict):
            raise BadInput(f"a request must be a JSON object, got {type(data).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(str(key) for key in set(data) - known)
        if unknown:
            raise BadInput(f"unknown request field(s): {', '.join(unknown)}")
        for required in ("input", "output"):
            if data.get(required) in (None, ""):
                raise BadInput(f"the request has no {required!r} path")
        return cls(**data)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (tuples become lists)."""
        out = asdict(self)
        for key in ("extent", "bands", "rgb"):
            if out[key] is not None:
                out[key] = list(out[key])
        return out


def request_id(value: Any) -> Any:
    """A protocol id as given, if it is one: a string or an integer (not a bool, not a float); else BadInput."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) <= 2**53:
        return value
    raise BadInput(f"a request id must be a string or an integer, got {_show(value)}")


def integer(name: str, value: Any) -> int:
    """An integer field: an int, or a float or string holding a whole number (never a bool)."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise BadInput(f"{name} must be an integer, got {_show(value)}")
    if isinstance(value, int) and abs(value) > LARGEST_INTEGER:
        raise BadInput(f"{name} must be an integer up to {LARGEST_INTEGER}, got {_show(value)}")
    try:
        number = float(value)
    except (ValueError, OverflowError):
        raise BadInput(f"{name} must be an integer, got {_show(value)}") from None
    if not math.isfinite(number) or number != int(number) or abs(number) > LARGEST_INTEGER:
        raise BadInput(f"{name} must be an integer, got {_show(value)}")
    return int(number)


def human_size(size: float) -> str:
    """Bytes as a short string with binary units (1.5 GiB): the one formatter of sizes for CLI and plugin."""
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


# Partial outputs: written beside the target under a hidden name that carries the writer's process id,
# so a later run (or the plugin) can tell a live writer's file from one left by a killed process.
_PARTIAL = re.compile(r"^\.(?P<stem>.*)\.partial-(?P<pid>\d+)-(?P<token>[0-9a-f]+)")


def partial_path(target: str, pid: int, token: str) -> str:
    """The hidden temporary name a run writes `target` under: `.<stem>.partial-<pid>-<token><suffix>`."""
    path = Path(target)
    return str(path.with_name(f".{path.stem}.partial-{pid}-{token}{path.suffix}"))


def partial_glob(target: str) -> str:
    """A glob, relative to the target's folder, matching every partial file of `target` and its sidecars."""
    return f".{glob_escape(Path(target).stem)}.partial-*"


def partial_owner(name: str, target: str) -> Optional[int]:
    """The process id that wrote partial file `name` (sidecars such as .msk included) for `target`, or None."""
    match = _PARTIAL.match(os.path.basename(name))
    if match is None or match.group("stem") != Path(target).stem:
        return None
    return int(match.group("pid"))


def glob_escape(text: str) -> str:
    """`text` with glob metacharacters made literal."""
    return re.sub(r"([*?\[])", r"[\1]", text)


def _path(name: str, value: Any) -> str:
    if isinstance(value, os.PathLike):
        value = os.fspath(value)
    if not isinstance(value, str) or not value.strip():
        raise BadInput(f"{name} must be a path, got {_show(value)}")
    if "\x00" in value:
        raise BadInput(f"{name} path contains a NUL character")
    return value


def _optional_text(name: str, value: Any) -> Optional[str]:
    if value is None:
        return None
    if not isinstance(value, str):
        raise BadInput(f"{name} must be text, got {_show(value)}")
    return value or None


def _choice(name: str, value: Any, choices: tuple[str, ...]) -> str:
    if not isinstance(value, str) or value not in choices:
        raise BadInput(f"{name} {_show(value)} is not one of {', '.join(choices)}")
    return value


def _band_list(name: str, value: Any) -> tuple[int, ...]:
    if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
        raise BadInput(f"{name} must be a list of 1-based band numbers, got {_show(value)}")
    bands = tuple(integer("band", band) for band in value)
    if not bands or any(band < 1 for band in bands):
        raise BadInput(f"{name} must be 1-based band numbers, got {_show(list(value))}")
    if len(set(bands)) != len(bands):
        raise BadInput(f"{name} names a band twice: {list(bands)}")
    return bands


def _extent(value: Any) -> tuple[float, float, float, float]:
    message = f"extent must be 4 numbers xmin,ymin,xmax,ymax, got {_show(value)}"
    if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)) or len(value) != 4:
        raise BadInput(message)
    if any(isinstance(v, bool) or not isinstance(v, (int, float)) for v in value):
        raise BadInput(message)
    try:
        extent = tuple(float(v) for v in value)
    except OverflowError:
        raise BadInput(f"extent {_show(value)} has a value too large for a coordinate") from None
    if not all(math.isfinite(v) for v in extent):
        raise BadInput(f"extent {list(extent)} has a value that is not a finite number")
    if extent[0] >= extent[2] or extent[1] >= extent[3]:
        raise BadInput(f"extent {list(extent)} is empty: xmin must be < xmax and ymin < ymax")
    return extent  # type: ignore[return-value]


def _show(value: Any) -> str:
    """A short, safe rendering of a bad value for a message."""
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."
