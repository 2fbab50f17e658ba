"""Map raster values to the model's [0, 1] range and back, per channel.

One normalisation is resolved once per run (never per tile, which would make
seams) and recorded in the output's metadata. Training uses the same class, so
a weights file's recorded spec means the same thing at inference time.

Spec strings:
    "fixed:LO,HI"        LO -> 0 and HI -> 1 for every channel
    "percentile:PLO,PHI" per channel, the PLO/PHI percentiles of the valid pixels
                         of the requested window -> 0 / 1
Values beyond LO/HI are not clipped on the way in, so bright targets above the
98th percentile keep their contrast; the inverse clips to the output dtype.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

from slimdiffsr_qgis.contract import BadInput

DEFAULT_PERCENTILES = (2.0, 98.0)


@dataclass(frozen=True)
class Normalisation:
    """A resolved normalisation: per-channel `lo` and `hi` values, plus the spec it came from."""

    spec: str
    lo: tuple[float, ...]
    hi: tuple[float, ...]

    def apply(self, values: np.ndarray) -> np.ndarray:
        """[C, H, W] raster values -> float32 model input, lo -> 0 and hi -> 1."""
        lo, span = self._arrays(values.shape[0])
        return ((values.astype(np.float32) - lo) / span).astype(np.float32)

    def invert(self, values: np.ndarray, dtype: np.dtype) -> np.ndarray:
        """[C, H, W] model output -> raster values of `dtype`, rounded and clipped for integers."""
        lo, span = self._arrays(values.shape[0])
        restored = values.astype(np.float64) * span + lo
        dtype = np.dtype(dtype)
        if dtype.kind in "iu":
            info = np.iinfo(dtype)
            restored = np.clip(np.rint(restored), info.min, info.max)
        return restored.astype(dtype)

    def spans(self, channels: int) -> tuple[float, ...]:
        """hi - lo per channel (1 where hi <= lo): what one model unit is in raster units."""
        return tuple(float(v) for v in self._arrays(channels)[1].ravel())

    def describe(self) -> str:
        """One line for output metadata and logs."""
        lo = ",".join(f"{v:g}" for v in self.lo)
        hi = ",".join(f"{v:g}" for v in self.hi)
        return f"{self.spec} (lo={lo}; hi={hi})"

    def _arrays(self, channels: int) -> tuple[np.ndarray, np.ndarray]:
        lo = np.asarray(self.lo, dtype=np.float64)
        hi = np.asarray(self.hi, dtype=np.float64)
        if lo.size == 1:
            lo, hi = np.repeat(lo, channels), np.repeat(hi, channels)
        if lo.size != channels:
            raise ValueError(f"normalisation has {lo.size} channels, data has {channels}")
        span = np.where(hi > lo, hi - lo, 1.0)
        return lo.reshape(-1, 1, 1), span.reshape(-1, 1, 1)


def default_spec(dtype: np.dtype) -> str:
    """What a run uses when neither the request nor the weights name a normalisation."""
    if np.dtype(dtype) == np.uint8:
        return "fixed:0,255"
    return "percentile:{:g},{:g}".format(*DEFAULT_PERCENTILES)


def parse_spec(spec: str) -> tuple[str, tuple[float, float]]:
    """Split "fixed:0,10000" into ("fixed", (0.0, 10000.0)); a bad spec is a BadInput."""
    kind, _, args = spec.partition(":")
    if kind not in ("fixed", "percentile"):
        raise BadInput(f"normalisation {spec!r} is not understood; use 'fixed:LO,HI' or 'percentile:PLO,PHI'")
    try:
        a, b = (float(v) for v in args.split(","))
    except ValueError:
        if kind == "percentile" and not args:
            return kind, DEFAULT_PERCENTILES
        raise BadInput(f"normalisation {spec!r} needs two numbers, e.g. '{kind}:2,98'") from None
    if not a < b:
        raise BadInput(f"normalisation {spec!r}: the first number must be smaller than the second")
    if kind == "percentile" and not (0 <= a and b <= 100):
        raise BadInput(f"normalisation {spec!r}: percentiles must lie in 0..100")
    return kind, (a, b)


def resolve(spec: str, sample: Optional[np.ndarray] = None, valid: Optional[np.ndarray] = None) -> Normalisation:
    """Turn a spec into per-channel values.

    sample: [C, H, W] values of the (decimated) requested window; needed for
        "percentile" specs. valid: bool mask of the pixels that are data, [H, W] for
        all channels or [C, H, W] per channel (each band its own nodata and mask).
    """
    kind, (a, b) = parse_spec(spec)
    if kind == "fixed":
        return Normalisation(spec=spec, lo=(a,), hi=(b,))
    if sample is None:
        raise ValueError("a percentile normalisation needs a sample of the window")
    lows, highs = [], []
    for index, channel in enumerate(sample):
        if valid is None:
            values = channel.ravel()
        else:
            values = channel[valid[index] if valid.ndim == 3 else valid]
        if values.size == 0:
            lows.append(0.0)
            highs.append(1.0)
            continue
        lo, hi = np.percentile(values.astype(np.float64), (a, b))
        lows.append(float(lo))
        highs.append(float(hi) if hi > lo else float(lo) + 1.0)
    return Normalisation(spec=spec, lo=tuple(lows), hi=tuple(highs))
