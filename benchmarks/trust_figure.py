"""The uncertainty layer in one picture: a test tile's LR, SR and HR, the predicted and the actual error, side by side.

One row per LR kind (clean bicubic, Real-ESRGAN degraded), the same tiles and LR
as benchmarks.calibration (whose cached student outputs it reuses). Predicted b
(expected |error|) and actual |error| (mean over the 3 channels) share one colour
scale per row, so a calibrated head shows the same brightness in both.

    .venv/bin/python -m benchmarks.trust_figure --student resources/weights/slimdiffsr_x4.safetensors \
        --head resources/weights/slimdiffsr_x4.error.safetensors --out docs/trust_x4.png [--sensor neon --index 0]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen before pyplot is imported)
import numpy as np  # noqa: E402

from backend.models.error_head import load_head, predict_error  # noqa: E402
from backend.models.weights import file_sha256  # noqa: E402
from benchmarks.calibration import student_outputs  # noqa: E402
from benchmarks.quality import LR_KINDS  # noqa: E402


def _rgb(values: np.ndarray) -> np.ndarray:
    return np.clip(np.transpose(values, (1, 2, 0)), 0, 1)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.trust_figure", description=__doc__.splitlines()[0])
    parser.add_argument("--student", type=Path, required=True, help="student weights (safetensors)")
    parser.add_argument("--head", type=Path, required=True, help="error head trained for that student")
    parser.add_argument("--out", type=Path, required=True, help="PNG to write")
    parser.add_argument("--sensor", default="neon", help="sensor family of the test tile")
    parser.add_argument("--index", type=int, default=0, help="which of that family's test tiles")
    parser.add_argument("--data", type=Path, default=Path("data/manifest.json"), help="data manifest")
    parser.add_argument("--tile", type=int, default=192, help="HR tile side (as in benchmarks.calibration)")
    parser.add_argument("--cache", type=Path, default=Path("runs/error_head"), help="folder of cached SR outputs")
    args = parser.parse_args(argv)
    head = load_head(args.head, file_sha256(str(args.student)))
    tiles = [t for t in student_outputs(args.student, args.data, "test", args.tile, args.cache)
             if t["sensor"] == args.sensor]
    if not 0 <= args.index < len(tiles):
        raise SystemExit(f"--index {args.index}: the test blocks hold {len(tiles)} {args.sensor} tiles")
    item = tiles[args.index]
    hr = item["hr"].numpy().astype(np.float32)
    figure, axes = plt.subplots(len(LR_KINDS), 5, figsize=(16, 3.5 * len(LR_KINDS)), constrained_layout=True)
    for row, kind in enumerate(LR_KINDS):
        lr = item[f"lr_{kind}"].numpy().astype(np.float32)
        sr = item[f"sr_{kind}"].numpy().astype(np.float32)
        predicted = predict_error(head, lr, sr)
        actual = np.abs(sr - hr).mean(axis=0)
        top = float(np.percentile(np.concatenate([actual.ravel(), predicted.ravel()]), 99))
        axes[row, 0].imshow(_rgb(lr), interpolation="nearest")
        axes[row, 0].set_title(f"{kind} LR input (x{head.scale} smaller)")
        axes[row, 1].imshow(_rgb(sr), interpolation="nearest")
        axes[row, 1].set_title("super-resolved output")
        axes[row, 2].imshow(_rgb(hr), interpolation="nearest")
        axes[row, 2].set_title("HR reference (ground truth)")
        axes[row, 3].imshow(predicted, cmap="magma", vmin=0, vmax=top, interpolation="nearest")
        axes[row, 3].set_title(f"predicted |error| (mean {predicted.mean():.3f})")
        shown = axes[row, 4].imshow(actual, cmap="magma", vmin=0, vmax=top, interpolation="nearest")
        axes[row, 4].set_title(f"actual |error| vs HR (mean {actual.mean():.3f})")
        figure.colorbar(shown, ax=axes[row, 3:], shrink=0.8, label="absolute error, [0, 1] units")
    for axis in axes.ravel():
        axis.set_xticks([])
        axis.set_yticks([])
    figure.suptitle(f"{item['scene']} (test block, {args.tile} px HR): the error layer beside the error it predicts")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(args.out, dpi=80)
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
