"""Score SR methods on HR images: the metric set of one (SR, HR) pair, gathered per LR kind, method and sensor.

Every pair gets PSNR-Y and SSIM-Y (border = scale cropped, the SR papers'
convention), and LPIPS, DISTS and NIQE features when their networks or
parameters are given (`MetricSet`). NIQE is not averaged per image: the 96 px
patch features of many images are pooled and scored once, which is steadier
on small tiles (`training.evaluation.metrics.niqe_score`). A method is any
function from an LR array to its SR array, so GDAL resampling, the engine's
tiled inference and a bare network are scored the same way.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Callable, Iterable, Optional, Sequence

import numpy as np
import torch

from backend.engine import RGB_PASS, super_resolve_array
from slimdiffsr_qgis.contract import RunRequest
from training.data.crops import EvaluationTile
from training.evaluation.dists import DISTS, load_dists
from training.evaluation.lr import image_seed, make_lr
from training.evaluation.metrics import NiqeModel, niqe_features, psnr_y, ssim_y
from training.losses.perceptual import LPIPS, build_perceptual

Upsampler = Callable[[np.ndarray], np.ndarray]
# (LR kind, method, sensor)
ScoreKey = tuple[str, str, str]


def model_upsampler(model: torch.nn.Module, consistency: bool = False,
                    passes: Sequence[tuple[int, ...]] = RGB_PASS) -> Upsampler:
    """The engine's tiled, blended inference with its default tile and overlap, on the CPU; with `consistency`,
    each tile back-projected to its input as the engine's option does. `passes`: the engine's band passes
    (0-based channels: a triplet together, any other band alone, replicated to three channels)."""
    defaults = RunRequest.__dataclass_fields__
    tile, overlap = defaults["tile"].default, defaults["overlap"].default
    return lambda lr01: super_resolve_array(model, lr01.astype(np.float32), tile, overlap, batch=4, device="cpu",
                                            passes=passes, consistency=consistency)


@dataclass(frozen=True)
class MetricSet:
    """The metrics beyond PSNR-Y and SSIM-Y, each None when not measured; LPIPS and DISTS run on `device`."""

    niqe: Optional[NiqeModel] = None
    lpips: Optional[LPIPS] = None
    dists: Optional[DISTS] = None
    device: torch.device = torch.device("cpu")

    @classmethod
    def from_files(cls, niqe_params: Optional[str] = None, lpips_weights: Optional[str] = None,
                   dists_weights: Optional[str] = None, device: torch.device = torch.device("cpu")) -> "MetricSet":
        """The metrics whose local files are given: NIQE parameters (.npz), LPIPS-VGG16 and DISTS weights."""
        lpips = build_perceptual(lpips_weights)[0].to(device) if lpips_weights else None
        return cls(niqe=NiqeModel(niqe_params) if niqe_params else None, lpips=lpips,
                   dists=load_dists(dists_weights).to(device) if dists_weights else None, device=device)


@dataclass
class Scores:
    """Per-image PSNR-Y, SSIM-Y, LPIPS and DISTS, and the pooled NIQE patch features, of one group of pairs."""

    psnr: list = field(default_factory=list)
    ssim: list = field(default_factory=list)
    features: list = field(default_factory=list)
    lpips: list = field(default_factory=list)
    dists: list = field(default_factory=list)

    @torch.inference_mode()
    def add(self, sr: torch.Tensor, hr: torch.Tensor, scale: int, metrics: MetricSet) -> None:
        """Score one [3, H, W] SR image in [0, 1] against its HR image."""
        self.psnr.append(psnr_y(sr, hr, border=scale))
        self.ssim.append(ssim_y(sr, hr, border=scale))
        if metrics.niqe is not None:
            self.features.append(niqe_features(sr, metrics.niqe, border=scale))
        pair = (sr[None].to(metrics.device), hr[None].to(metrics.device))
        if metrics.lpips is not None:
            self.lpips.append(float(metrics.lpips(*pair)))
        if metrics.dists is not None:
            self.dists.append(float(metrics.dists(*pair)))

    @classmethod
    def pooled(cls, groups: Iterable["Scores"]) -> "Scores":
        """The scores of several groups as one (e.g. every sensor's)."""
        pooled = cls()
        for group in groups:
            for name, values in vars(group).items():
                getattr(pooled, name).extend(values)
        return pooled


def score_images(images: Iterable[EvaluationTile], methods: dict[str, Upsampler], scale: int,
                 kinds: Sequence[str], metrics: MetricSet) -> dict[ScoreKey, Scores]:
    """Scores keyed by (LR kind, method, sensor): each image's LR of every kind (seeded by its index),
    brought back to HR size by every method, its output clipped to [0, 1]."""
    scores: dict[ScoreKey, Scores] = defaultdict(Scores)
    for index, item in enumerate(images):
        hr = torch.from_numpy(item.hr)
        for kind in kinds:
            lr = make_lr(item.hr, scale, kind, image_seed(index))
            for name, upsample in methods.items():
                output = torch.from_numpy(np.clip(upsample(lr), 0.0, 1.0))
                scores[(kind, name, item.sensor)].add(output, hr, scale, metrics)
    return scores
