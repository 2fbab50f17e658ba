"""The uncertainty layer in one picture: a test tile's LR, SR and HR, the predicted and the actual error, side by side.

One row per LR kind (clean bicubic, Real-ESRGAN degraded), the same tiles and LR
as benchmarks.calibration (whose cached student outputs it reuses). The predicted
median |error| and the actual |error| (mean over the 3 channels) share one colour
scale per row, from black (0) through purple to yellow (the row's 99th percentile),
so a calibrated head is as bright as the middle of the actual error's scatter; the
actual error's label gives the share of channel values below the prediction
(benchmarks.calibration's "below median", 50 % when calibrated).

    .venv/bin/python -m benchmarks.trust_figure --student resources/weights/slimdiffsr_x4.safetensors \
        --head resources/weights/slimdiffsr_x4.error.safetensors --out docs/trust_x4.png [--sensor neon --index 0]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
from PIL import Image, ImageDraw

from backend.models.error_head import below_median_share, load_head, predict_error
from backend.models.weights import file_sha256
from benchmarks.calibration import student_outputs
from training.evaluation.lr import LR_KINDS

LABEL_HEIGHT = 18
ZOOM = 2
GAP = 6
# Anchors of the error colour scale (black, purple, orange, pale yellow), as in perceptual "magma"-like maps.
COLOURS = np.array([[0, 0, 4], [81, 18, 124], [183, 55, 121], [252, 137, 97], [252, 253, 191]], dtype=np.float64)


def rgb_image(values: np.ndarray) -> Image.Image:
    """A [3, H, W] array in [0, 1] as an RGB image enlarged ZOOM times (nearest)."""
    image = Image.fromarray((np.clip(values, 0, 1) * 255).round().astype(np.uint8).transpose(1, 2, 0))
    return image.resize((image.width * ZOOM, image.height * ZOOM), Image.NEAREST)


def error_image(values: np.ndarray, top: float) -> Image.Image:
    """An [H, W] error map coloured on the 0..top scale, enlarged ZOOM times (nearest)."""
    position = np.clip(values / top, 0, 1) * (len(COLOURS) - 1)
    anchors = np.arange(len(COLOURS))
    rgb = np.stack([np.interp(position, anchors, COLOURS[:, c]) for c in range(3)])
    return rgb_image(rgb / 255)


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
    parser.add_argument("--consistency", action="store_true",
                        help="the output back-projected to the LR, as the engine writes it by default")
    args = parser.parse_args(argv)
    head = load_head(args.head, file_sha256(str(args.student)))
    tiles = [t for t in student_outputs(args.student, args.data, "test", args.tile, args.cache, args.consistency)
             if t["sensor"] == args.sensor]
    if not 0 <= args.index < len(tiles):
        raise SystemExit(f"--index {args.index}: the test blocks hold {len(tiles)} {args.sensor} tiles")
    item = tiles[args.index]
    hr = item["hr"].numpy().astype(np.float32)
    side = hr.shape[-1] * ZOOM
    row_height = side + 2 * LABEL_HEIGHT
    canvas = Image.new("RGB", (5 * (side + GAP) - GAP, LABEL_HEIGHT + len(LR_KINDS) * row_height), "white")
    draw = ImageDraw.Draw(canvas)
    draw.text((4, 3), f"{item['scene']}, test block, {hr.shape[-1]} px HR, x{head.scale}: predicted and actual "
                      "error share a colour scale per row (black 0 to yellow = the row's 99th percentile)",
              fill="black")
    for row, kind in enumerate(LR_KINDS):
        lr = item[f"lr_{kind}"].numpy().astype(np.float32)
        sr = item[f"sr_{kind}"].numpy().astype(np.float32)
        predicted = predict_error(head, lr, sr)
        channel_errors = np.abs(sr - hr)
        actual = channel_errors.mean(axis=0)
        top = float(np.percentile(np.concatenate([actual.ravel(), predicted.ravel()]), 99))
        nearest = lr.repeat(head.scale, axis=1).repeat(head.scale, axis=2)
        columns = ((f"{kind} LR input (nearest)", rgb_image(nearest)), ("super-resolved output", rgb_image(sr)),
                   ("HR reference (ground truth)", rgb_image(hr)),
                   (f"predicted median |error|, mean {predicted.mean():.3f}", error_image(predicted, top)),
                   (f"actual |error|: {100 * below_median_share(predicted, channel_errors):.0f} % below prediction",
                    error_image(actual, top)))
        y = LABEL_HEIGHT + row * row_height
        draw.text((4, y + 3), f"{kind} LR: colour scale 0 to {top:.3f} ([0, 1] units)", fill="black")
        for column, (label, image) in enumerate(columns):
            canvas.paste(image, (column * (side + GAP), y + 2 * LABEL_HEIGHT))
            draw.text((column * (side + GAP) + 4, y + LABEL_HEIGHT + 3), label, fill="black")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(args.out)
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
