"""A side-by-side PNG of held-out crops: LR (nearest), GDAL cubic, the student, and the HR truth.

One row per chosen sensor, from the first test tile of that sensor (the tiles
`benchmarks.quality` scores), with clean bicubic LR; the centre of each tile is
shown at 2x with nearest-neighbour display so pixels stay visible.

    .venv/bin/python -m benchmarks.side_by_side --weights resources/weights/slimdiffsr_x4.safetensors \
        --out docs/side_by_side_x4.png [--sensors sentinel2 neon]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
from PIL import Image, ImageDraw

from backend.models import load
from benchmarks.quality import gdal_upsample
from training.data.crops import evaluation_tiles, scenes_from_manifest
from training.evaluation.lr import make_lr
from training.evaluation.scoring import model_upsampler

LABEL_HEIGHT = 18


def _panel(values: np.ndarray, side: int, zoom: int) -> Image.Image:
    """The central side x side pixels of a [3, H, W] array in [0, 1], enlarged `zoom` times (nearest)."""
    top = (values.shape[1] - side) // 2
    left = (values.shape[2] - side) // 2
    crop = np.clip(values[:, top:top + side, left:left + side], 0, 1)
    image = Image.fromarray((crop * 255).round().astype(np.uint8).transpose(1, 2, 0))
    return image.resize((side * zoom, side * zoom), Image.NEAREST)


def render(manifest: Path, weights: Path, sensors: Sequence[str], out: Path, side: int = 160, zoom: int = 2,
           role: str = "test") -> None:
    """Write the PNG: rows = sensors, columns = LR nearest, GDAL cubic, student, HR."""
    model = load(weights)
    scale = model.scale
    student = model_upsampler(model)
    tiles = {}
    for tile in evaluation_tiles(scenes_from_manifest(manifest), role=role, tile=384):
        tiles.setdefault(tile.sensor, tile)
    missing = [s for s in sensors if s not in tiles]
    if missing:
        raise SystemExit(f"no {role} tile for sensor(s) {', '.join(missing)}; have {', '.join(sorted(tiles))}")
    width = side * zoom
    canvas = Image.new("RGB", (4 * width, len(sensors) * (width + LABEL_HEIGHT)), "white")
    draw = ImageDraw.Draw(canvas)
    for row, sensor in enumerate(sensors):
        tile = tiles[sensor]
        lr = make_lr(tile.hr, scale, "clean", 0)
        nearest = lr.repeat(scale, axis=1).repeat(scale, axis=2)
        columns = ((f"{sensor}: LR (nearest)", nearest),
                   (f"GDAL cubic x{scale}", gdal_upsample(lr, scale, "cubic")),
                   (f"SlimDiffSR x{scale}", student(lr)), (f"HR: {tile.scene}", tile.hr))
        y = row * (width + LABEL_HEIGHT)
        for column, (label, values) in enumerate(columns):
            canvas.paste(_panel(values, side, zoom), (column * width, y + LABEL_HEIGHT))
            draw.text((column * width + 4, y + 3), label, fill="black")
    out.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(out)
    print(f"wrote {out}")


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.side_by_side", description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("data/manifest.json"), help="data manifest")
    parser.add_argument("--weights", type=Path, required=True, help="student weights (safetensors)")
    parser.add_argument("--sensors", nargs="+", default=["sentinel2", "neon"], help="one row per sensor")
    parser.add_argument("--out", type=Path, default=Path("docs/side_by_side_x4.png"))
    args = parser.parse_args(argv)
    render(args.data, args.weights, args.sensors, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
