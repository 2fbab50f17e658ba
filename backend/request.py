"""The run request: everything one super-resolution run needs, shared by CLI, server and plugin.

The plugin never imports this module (it builds the same JSON object); the server
turns that JSON into a `RunRequest` with `RunRequest.from_dict`, which is where
types are checked, so every entry point gets the same validation and messages.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any, Optional

from .errors import BadInput

SUPPORTED_SCALES = (4, 8)
DEVICES = ("auto", "cpu", "cuda")
OUTPUT_DTYPES = ("same", "float32")


@dataclass
class RunRequest:
    """One run: read `input` (window `extent`), super-resolve by `scale`, write `output`.

    extent: (xmin, ymin, xmax, ymax) in map units of `extent_crs` (any CRS GDAL
        understands: WKT, "EPSG:4326", ...), or of the raster's CRS when None;
        None means the whole raster.
    bands: 1-based band numbers feeding the model's 3 channels; None means
        (1, 2, 3), or band 1 replicated for a single-band raster.
    weights: a safetensors file; None means the shipped default weights.
    model: "bicubic" for the labelled classical baseline; None for the student.
    normalisation: None (the weights' recorded normalisation, else uint8 -> /255
        and other types -> 2-98 % percentile stretch), "fixed:LO,HI" or
        "percentile:PLO,PHI".
    tile, overlap: LR pixels.
    """

    input: str
    output: str
    scale: int = 4
    extent: Optional[tuple[float, float, float, float]] = None
    extent_crs: Optional[str] = None
    bands: Optional[tuple[int, ...]] = None
    weights: Optional[str] = None
    model: Optional[str] = None
    device: str = "auto"
    tile: int = 256
    overlap: int = 32
    normalisation: Optional[str] = None
    output_dtype: str = "same"
    overwrite: bool = False

    def __post_init__(self) -> None:
        self.input = str(self.input)
        self.output = str(self.output)
        self.scale = _as_int("scale", self.scale)
        if self.scale not in SUPPORTED_SCALES:
            raise BadInput(f"scale {self.scale} is not supported; use one of {', '.join(map(str, SUPPORTED_SCALES))}")
        if self.extent is not None:
            try:
                extent = tuple(float(v) for v in self.extent)
            except (TypeError, ValueError):
                raise BadInput(f"extent must be 4 numbers xmin,ymin,xmax,ymax, got {self.extent!r}") from None
            if len(extent) != 4:
                raise BadInput(f"extent must be 4 numbers xmin,ymin,xmax,ymax, got {len(extent)}")
            if extent[0] >= extent[2] or extent[1] >= extent[3]:
                raise BadInput(f"extent {extent} is empty: xmin must be < xmax and ymin < ymax")
            self.extent = extent
        if self.bands is not None:
            bands = tuple(_as_int("band", b) for b in self.bands)
            if not bands or any(b < 1 for b in bands):
                raise BadInput(f"bands must be 1-based band numbers, got {list(self.bands)}")
            if len(bands) not in (1, 3):
                raise BadInput(f"give 1 band (replicated) or 3 bands for the model's RGB input, got {len(bands)}")
            self.bands = bands
        if self.model not in (None, "bicubic"):
            raise BadInput(f"unknown model {self.model!r}; the only built-in model is 'bicubic' (a classical baseline)")
        if self.device not in DEVICES:
            raise BadInput(f"device {self.device!r} is not one of {', '.join(DEVICES)}")
        self.tile = _as_int("tile", self.tile)
        self.overlap = _as_int("overlap", self.overlap)
        if self.tile < 16:
            raise BadInput(f"tile size {self.tile} is too small; use at least 16 LR pixels")
        if not 0 <= self.overlap < self.tile // 2:
            raise BadInput(f"overlap {self.overlap} must be >= 0 and less than half the tile size ({self.tile})")
        if self.output_dtype not in OUTPUT_DTYPES:
            raise BadInput(f"output dtype {self.output_dtype!r} is not one of {', '.join(OUTPUT_DTYPES)}")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "RunRequest":
        """Build from a protocol/JSON object; unknown keys are an error, not ignored."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise BadInput(f"unknown request field(s): {', '.join(unknown)}")
        for required in ("input", "output"):
            if not data.get(required):
                raise BadInput(f"the request has no {required!r} path")
        return cls(**data)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (tuples become lists)."""
        out = asdict(self)
        for key in ("extent", "bands"):
            if out[key] is not None:
                out[key] = list(out[key])
        return out


def _as_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise BadInput(f"{name} must be an integer, got {value!r}")
    try:
        number = float(value)
    except ValueError:
        raise BadInput(f"{name} must be an integer, got {value!r}") from None
    if number != int(number):
        raise BadInput(f"{name} must be an integer, got {value!r}")
    return int(number)
