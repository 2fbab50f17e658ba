"""The LR input of an evaluation image: clean, Real-ESRGAN degraded or sensor degraded, seeded per image.

Every evaluation (training's report and the benchmarks) makes its LR here, so
a figure from one is comparable with a figure from another. The reduction is
the one training uses (`training.data.crops.make_lr`); evaluation names the
Real-ESRGAN chain "degraded", the paper's word for its test inputs. The chains
draw their blur, noise and compression from a generator seeded with
DEGRADATION_SEED plus the image's index, so each image always gets the same LR
and two methods always see the same one.
"""

from __future__ import annotations

import numpy as np
import torch

from training.data import crops

CLEAN, DEGRADED, SENSOR_LR = "clean", "degraded", "sensor"
# The LR kinds every held-out table scores; SENSOR_LR is a third, scored on request.
LR_KINDS = (CLEAN, DEGRADED)
EVALUATION_LR_KINDS = (*LR_KINDS, SENSOR_LR)
LR_DESCRIPTIONS = {CLEAN: "antialiased bicubic downsampling", DEGRADED: "Real-ESRGAN second-order degradation",
                   SENSOR_LR: "sensor degradation (training.data.sensor_degradation)"}
DEGRADATION_SEED = 2021
_TRAINING_KIND = {CLEAN: "clean", DEGRADED: "realesrgan", SENSOR_LR: "sensor"}


def make_lr(hr: np.ndarray, scale: int, kind: str, seed: int) -> np.ndarray:
    """The [C, H/scale, W/scale] LR of a [C, H, W] HR image in [0, 1], of one of EVALUATION_LR_KINDS.

    `seed` fixes the degradation's draws (unused for clean LR); use `image_seed`.
    """
    if kind not in _TRAINING_KIND:
        raise ValueError(f"unknown LR kind {kind!r}; use one of {', '.join(EVALUATION_LR_KINDS)}")
    batch = torch.from_numpy(np.ascontiguousarray(hr))[None]
    generator = torch.Generator().manual_seed(seed)
    return crops.make_lr(batch, scale, _TRAINING_KIND[kind], generator)[0].numpy()


def image_seed(index: int) -> int:
    """The degradation seed of the `index`-th evaluation image."""
    return DEGRADATION_SEED + index
