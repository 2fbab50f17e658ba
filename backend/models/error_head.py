"""The error head: a small learned map of the absolute error expected of each super-resolved pixel.

Hand-made predictors (local LR gradient, |SR - bicubic|, the spread of flip/rotation
predictions) rank errors on clean LR but not on degraded LR, where blur hides the
texture that causes the error; so the error is learned. The head reads the LR tile
and the student's SR tile brought back to the LR grid by space-to-depth (the SR
minus the bicubic upsampling of the LR, so it sees what the student added), runs a
few 3x3 convs at LR resolution, and writes s*s values per LR pixel that pixel-shuffle
to one log value per HR pixel, in the units of the model's [0, 1] values. What
that value is, the file says (STATISTIC_KEY): the median absolute error of the
pixel's 3 channel values, learnt with the pinball loss at the median (median_loss),
or the scale b of a Laplace distribution of that error, learnt with its negative
log-likelihood (laplace_nll), whose median is b ln 2. Runs always write the median:
it is what "half of the values err by less than this" promises, and the Laplace
scale turns out to place the median wrong when the error is noise-like (degraded
input: about 42 % of Gaussian errors fall below b ln 2, not 50 %).

A head is tied to the student it was trained on: its file records the sha256 of
that student's weights file, and `load_head` refuses it for another student.
The head is local (RECEPTIVE_RADIUS LR pixels), so running it per tile with at
least that overlap gives the same map as one pass over the whole window.
"""

from __future__ import annotations

import copy
import json
import math
import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from slimdiffsr_qgis.contract import BadInput

CONFIG_KEY = "slimdiffsr_error_head_config"
STUDENT_SHA_KEY = "student_sha256"
FORMAT_KEY = "format"
LOG_B_RANGE = (-12.0, 0.0)
"""log b is clamped here: b below e^-12 would make the NLL blow up on exact pixels; above 1 is the whole range."""
INITIAL_B = 0.02
"""A typical absolute error of the student in [0, 1] units: the head starts near it, not at b = 1."""
BICUBIC_RADIUS = 2
"""Bicubic upsampling reads 2 LR pixels on each side of an HR pixel's position."""
HEAD_SUFFIX = ".error.safetensors"
OUTPUT_KEY = "output"
"""Which output a head learnt the error of: the student's raw output, or it back-projected to the LR."""
LEVEL_KEY = "level_factor"
"""The factor a recalibration multiplied the head's b by (the product of all of them), absent when never."""
RECALIBRATED_KEY = "recalibrated_on"
"""The reference images the last recalibration measured its factor on."""
TRAINED_ON_KEY = "trained_on"
"""The sensor families whose training blocks the head learnt from, comma-separated."""
MEDIAN_OF_B = math.log(2.0)
"""For a Laplace error of scale b, the median absolute error is b ln 2 (the mean is b)."""
STATISTIC_KEY = "statistic"
"""What a head's output is: MEDIAN (trained with median_loss) or MEAN (laplace_nll; heads from before the key)."""
MEDIAN, MEAN = "median absolute error", "mean absolute error (Laplace scale)"
PathLike = Union[str, os.PathLike]


@dataclass(frozen=True)
class ErrorHeadConfig:
    """The head's shape: scale, width, and one dilation per 3x3 conv (their count is the depth)."""

    scale: int = 4
    channels: int = 32
    dilations: tuple[int, ...] = (1, 2, 4, 1)

    def __post_init__(self) -> None:
        if self.scale not in (2, 4, 8) or not 1 <= self.channels <= 256 or not 1 <= len(self.dilations) <= 16 \
                or any(not 1 <= d <= 16 for d in self.dilations):
            raise ValueError(f"error head config out of bounds: {self}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "ErrorHeadConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown error head config key(s) {unknown}")
        values = dict(values)
        if "dilations" in values:
            values["dilations"] = tuple(int(d) for d in values["dilations"])
        return cls(**values)

    @property
    def receptive_radius(self) -> int:
        """LR pixels on each side that one output pixel depends on: the convs' reach plus the bicubic taps."""
        return sum(self.dilations) + BICUBIC_RADIUS


class ErrorHead(nn.Module):
    """(LR [B,3,h,w], SR [B,3,h*s,w*s]) in [0, 1] -> log b [B,1,h*s,w*s]."""

    def __init__(self, config: ErrorHeadConfig = ErrorHeadConfig()):
        super().__init__()
        self.config = config
        self.scale = config.scale
        self.meta: dict[str, str] = {}
        inputs = 3 + 3 * config.scale ** 2
        layers: list[nn.Module] = []
        for index, dilation in enumerate(config.dilations):
            layers += [nn.Conv2d(inputs if index == 0 else config.channels, config.channels, 3,
                                 padding=dilation, dilation=dilation, padding_mode="replicate"), nn.SiLU()]
        self.body = nn.Sequential(*layers)
        self.out = nn.Conv2d(config.channels, config.scale ** 2, 1)
        nn.init.zeros_(self.out.weight)
        nn.init.constant_(self.out.bias, float(np.log(INITIAL_B)))

    def forward(self, lr: torch.Tensor, sr: torch.Tensor) -> torch.Tensor:
        upsampled = F.interpolate(lr, scale_factor=self.scale, mode="bicubic", align_corners=False)
        added = F.pixel_unshuffle(sr - upsampled, self.scale)
        log_b = F.pixel_shuffle(self.out(self.body(torch.cat([lr, added], dim=1))), self.scale)
        return log_b.clamp(*LOG_B_RANGE)


def laplace_nll(log_b: torch.Tensor, sr: torch.Tensor, hr: torch.Tensor) -> torch.Tensor:
    """Mean Laplace negative log-likelihood |e|/b + log b of the errors sr - hr (b shared by a pixel's channels)."""
    return ((sr - hr).abs() * torch.exp(-log_b) + log_b).mean()


def median_loss(log_m: torch.Tensor, sr: torch.Tensor, hr: torch.Tensor) -> torch.Tensor:
    """Mean pinball loss at the median of the errors |sr - hr| against m (shared by a pixel's channels), each
    pixel divided by its own m (held constant): the gradient in log m is the sign of m - |e| whatever the
    pixel's error level, so quiet and busy pixels learn alike, and the optimum is still the median."""
    median = torch.exp(log_m)
    return ((sr - hr).abs() - median).abs().div(median.detach()).mean()


def head_statistic(head: "ErrorHead") -> str:
    """What the head's output is (MEDIAN or MEAN); heads from before the key learnt the Laplace scale."""
    return (getattr(head, "meta", None) or {}).get(STATISTIC_KEY, MEAN)


def median_of_output(head: "ErrorHead") -> float:
    """The factor that turns the head's output into the median absolute error it predicts."""
    return 1.0 if head_statistic(head) == MEDIAN else MEDIAN_OF_B


def median_maps(head: ErrorHead, lr: torch.Tensor, sr: torch.Tensor) -> torch.Tensor:
    """[B, 1, H, W] median absolute error (model units) predicted for outputs sr [B, 3, H, W] made from lr
    [B, 3, h, w], whichever statistic the head learnt; sr is clipped to [0, 1] as the written output is and as
    the head's training outputs were."""
    with torch.inference_mode():
        return torch.exp(head(lr.float(), sr.float().clamp(0.0, 1.0))) * median_of_output(head)


def predict_error(head: ErrorHead, lr01: np.ndarray, sr01: np.ndarray) -> np.ndarray:
    """[h*s, w*s] float32 median absolute error predicted for each output pixel's channel values, in [0, 1] units
    (median_maps of one image).

    lr01: the LR the student read, [3, h, w] in [0, 1]; sr01: the student's output for it, [3, h*s, w*s].
    """
    scale = head.scale
    if lr01.ndim != 3 or lr01.shape[0] != 3 or sr01.shape != (3, lr01.shape[1] * scale, lr01.shape[2] * scale):
        raise ValueError(f"predict_error needs LR [3, h, w] and SR [3, h*{scale}, w*{scale}]; "
                         f"got {tuple(lr01.shape)} and {tuple(sr01.shape)}")
    device = next(head.parameters()).device
    lr = torch.from_numpy(np.ascontiguousarray(lr01, dtype=np.float32))[None].to(device)
    sr = torch.from_numpy(np.ascontiguousarray(sr01, dtype=np.float32))[None].to(device)
    return median_maps(head.eval(), lr, sr)[0, 0].cpu().numpy()


def below_median_share(predicted_median: np.ndarray, abs_error: np.ndarray) -> float:
    """Share of channel values [C, H, W] whose |error| is below the predicted median absolute error ([H, W]):
    50 % when the head is calibrated."""
    return float((abs_error < predicted_median[None]).mean())


def level_factor(predicted_median: Sequence[np.ndarray], abs_error: Sequence[np.ndarray]) -> float:
    """The factor k that makes k times the predicted median the median of the actual errors: the median over
    every channel value of |e| / predicted median. predicted_median: [H, W] maps; abs_error: the matching
    [C, H, W] actual |errors|."""
    ratios = [(error / np.maximum(median, 1e-12)[None]).ravel() for median, error in zip(predicted_median, abs_error)]
    if not ratios or not sum(r.size for r in ratios):
        raise ValueError("level_factor needs at least one pixel")
    return float(np.median(np.concatenate(ratios)))


def rescaled(head: ErrorHead, factor: float, reference: str) -> ErrorHead:
    """A copy of `head` whose every output is `factor` times larger (folded into its output bias, so the file
    format and cost stay the same), recording the factor and the `reference` it was measured on."""
    if not (math.isfinite(factor) and factor > 0):
        raise ValueError(f"a level factor must be a positive number, not {factor}")
    copied = copy.deepcopy(head)
    with torch.no_grad():
        copied.out.bias += math.log(factor)
    previous = float(head.meta.get(LEVEL_KEY, 1.0))
    copied.meta = {**head.meta, LEVEL_KEY: f"{previous * factor:.6g}", RECALIBRATED_KEY: reference}
    return copied


def calibrated_on(head: ErrorHead) -> str:
    """Where the head's level was set, for the layer's metadata: the references of its last recalibration, or
    the families it trained on with what a run on any other sensor should expect and do."""
    if RECALIBRATED_KEY in head.meta:
        return head.meta[RECALIBRATED_KEY]
    families = head.meta.get(TRAINED_ON_KEY, "").replace(",", ", ") or "unrecorded sensor families"
    return (f"the training blocks of {families}; on another sensor the level can be off by up to a factor of 2 "
            "(the ranking of pixels holds better): recalibrate it on reference images of that sensor with "
            "python -m training.stages.recalibrate_head")


def output_kind(consistency: bool) -> str:
    """The OUTPUT_KEY value of a head trained on (consistency=True) back-projected or (False) raw outputs."""
    return "back-projected to the input" if consistency else "raw"


def head_output(head: "ErrorHead") -> str:
    """The output a loaded head learnt the error of (heads from before the key learnt the raw output)."""
    return (getattr(head, "meta", None) or {}).get(OUTPUT_KEY, output_kind(False))


def head_beside(weights: PathLike) -> Optional[Path]:
    """The error head shipped beside a student's weights (`NAME.safetensors` -> `NAME.error.safetensors`), if any."""
    weights = Path(weights)
    path = weights.with_name(weights.name.removesuffix(".safetensors") + HEAD_SUFFIX)
    return path if path.is_file() else None


def save_head(head: ErrorHead, path: PathLike, student_sha256: str, meta: Optional[dict[str, str]] = None) -> None:
    """Writes the head's tensors, config, the sha256 of its student's weights file and `meta` to safetensors."""
    metadata = {**(meta or {}), FORMAT_KEY: "pt", STUDENT_SHA_KEY: student_sha256,
                CONFIG_KEY: json.dumps(head.config.to_dict(), sort_keys=True)}
    target = Path(path)
    partial = target.with_name(target.name + ".partial")
    try:
        save_file({k: v.detach().cpu().contiguous() for k, v in head.state_dict().items()}, str(partial),
                  metadata=metadata)
        os.replace(partial, target)
    finally:
        partial.unlink(missing_ok=True)


def load_head(path: PathLike, student_sha256: Optional[str] = None, device: str = "cpu") -> ErrorHead:
    """The head stored in `path`, in eval mode; BadInput if it was trained for a student other than
    `student_sha256` (its predictions describe that student's errors, not this one's)."""
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
        config = ErrorHeadConfig.from_dict(json.loads(metadata[CONFIG_KEY]))
        tensors = load_file(str(path), device="cpu")
    except KeyError:
        raise BadInput(f"{path}: not an error head file (no {CONFIG_KEY} in its metadata)") from None
    except (SafetensorError, OSError, ValueError, TypeError) as exc:
        raise BadInput(f"{path}: cannot read the error head ({' '.join(str(exc).split())})") from exc
    trained_for = metadata.get(STUDENT_SHA_KEY, "")
    if student_sha256 is not None and trained_for != student_sha256:
        raise BadInput(f"{path}: this error head was trained for the student weights with sha256 "
                       f"{trained_for[:12] or 'unknown'}..., not {student_sha256[:12]}...; "
                       "train a head for these weights with python -m training.stages.error_head")
    head = ErrorHead(config)
    try:
        head.load_state_dict(tensors, strict=True)
    except RuntimeError as exc:
        raise BadInput(f"{path}: tensors do not match the error head config in its metadata") from exc
    head.meta = {k: v for k, v in metadata.items() if k not in (CONFIG_KEY, FORMAT_KEY)}
    return head.to(device).eval()


def describe_head(path: PathLike) -> str:
    """What an error head file says about itself: its shape, its student, the output it learnt, its record."""
    head = load_head(path)
    lines = [f"{path}: error head, {sum(p.numel() for p in head.parameters()):,} parameters",
             f"config: {json.dumps(head.config.to_dict(), sort_keys=True)}",
             f"output whose error it learnt: {head_output(head)}"]
    lines += [f"{key}: {value}" for key, value in sorted(head.meta.items()) if key != OUTPUT_KEY]
    return "\n".join(lines)

