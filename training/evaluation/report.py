"""Evaluate SR models on held-out images of the training config's data and write a Markdown table.

    python -m training.evaluation.report --config training/configs/tiny_cpu.yaml [--models bicubic W1.safetensors ...]
        [--role test] [--lr clean|degraded|sensor] [--whole] [--niqe-params data/niqe_pris_params.npz]
        [--lpips-weights lpips_vgg.safetensors] [--dists-weights dists_vgg.safetensors]

Columns: PSNR and SSIM on Y (border = scale cropped), NIQE of the outputs when
its parameters file is given, LPIPS and DISTS when their weights are given, parameters,
and seconds per 512x512 output on this machine (`training.evaluation.timing`).
The images, their LR and the scores come from the modules `benchmarks.quality`
uses too (`images`, `lr`, `scoring`), so the two tables agree on a figure's
meaning. LR is clean bicubic downsampling unless `lr` says otherwise;
`lr: degraded` with `whole: true` is the paper's protocol (Real-ESRGAN-degraded
LR, each held-out block scored whole). The options come from the config's
`evaluate` section (`EvaluateSettings`); the command line overrides them.

Each model runs untiled on the whole LR image, on the config's device: this
report scores the network, which is what training changes and what the paper
reports, while `benchmarks.quality` scores the engine's tiled, blended
inference, what a QGIS user gets. Untiled, a whole block needs the memory of
all its activations at once; on a large block use a GPU or tiles. The default
model list is bicubic plus the student stage's product, when it exists.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Optional, Sequence

import numpy as np
import torch
from torch import nn

from slimdiffsr_qgis.contract import BadInput, SlimDiffSRError
from backend.models import load
from backend.models.bicubic import BicubicUpscaler

from training.data.crops import EvaluationTile
from training.data.datasets import scenes
from training.data.scene_split import ROLES
from training.evaluation.images import held_out_images
from training.evaluation.lr import CLEAN, EVALUATION_LR_KINDS, LR_DESCRIPTIONS
from training.evaluation.metrics import niqe_score
from training.evaluation.scoring import MetricSet, Scores, Upsampler, score_images
from training.evaluation.timing import TIMED_SIDE, seconds_per_output
from training.runtime.config import load_config, product_path, stage_dir, typed_section
from training.runtime.entry import apply_cpu_threads


@dataclass(frozen=True)
class EvaluateSettings:
    """The config's `evaluate` section: which images, which LR, which optional metrics."""

    role: str = "test"
    crop: int = 256  # tile side in HR pixels; unused with `whole`
    limit: int = 100  # at most this many images (tiles, or blocks with `whole`)
    lr: str = CLEAN  # one of training.evaluation.lr.EVALUATION_LR_KINDS
    whole: bool = False  # each held-out block whole instead of `crop` tiles
    niqe_params: Optional[str] = None
    lpips_weights: Optional[str] = None
    dists_weights: Optional[str] = None

    def __post_init__(self) -> None:
        if self.role not in ROLES:
            raise BadInput(f"evaluate.role {self.role!r} is not one of {', '.join(ROLES)}")
        if self.lr not in EVALUATION_LR_KINDS:
            raise BadInput(f"evaluate.lr {self.lr!r} is not one of {', '.join(EVALUATION_LR_KINDS)}")
        for name in ("crop", "limit"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise BadInput(f"evaluate.{name} must be a positive whole number, not {value!r}")
        if not isinstance(self.whole, bool):
            raise BadInput(f"evaluate.whole must be true or false, not {self.whole!r}")


@dataclass
class Row:
    """One model's figures; None where a metric was not measured."""

    name: str
    psnr: float
    ssim: float
    niqe: Optional[float]
    lpips: Optional[float]
    dists: Optional[float]
    parameters: int
    seconds: float


def model_from(spec: str, scale: int) -> tuple[str, nn.Module]:
    """The model a spec names ("bicubic" or a student weights file), with its display name, in eval mode."""
    if spec == "bicubic":
        return "bicubic (baseline)", BicubicUpscaler(scale).eval()
    model = load(spec)
    if model.config.scale != scale:
        raise BadInput(f"{spec} is a x{model.config.scale} model; this evaluation is x{scale}")
    return Path(spec).name, model


def untiled(model: nn.Module, device: torch.device) -> Upsampler:
    """The model as a scoring method: one forward pass over the whole LR array on `device`."""
    def upsample(lr: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return model(torch.from_numpy(lr)[None].to(device)).clamp(0, 1)[0].cpu().numpy()
    return upsample


def evaluate(models: Sequence[str], images: Iterable[EvaluationTile], scale: int, device: torch.device,
             metrics: MetricSet, lr: str = CLEAN) -> list[Row]:
    """Figures for each model over the HR images, from their `lr` LR, all sensors pooled."""
    named = dict(model_from(spec, scale) for spec in models)
    for model in named.values():
        model.to(device)
    scores = score_images(images, {name: untiled(m, device) for name, m in named.items()}, scale, [lr], metrics)
    if not scores:
        raise BadInput("no evaluation images: the chosen blocks hold none without nodata or cloud")
    rows = []
    for name, model in named.items():
        pooled = Scores.pooled(s for (_, method, _), s in scores.items() if method == name)
        rows.append(Row(
            name=name, psnr=statistics.fmean(pooled.psnr), ssim=statistics.fmean(pooled.ssim),
            niqe=niqe_score(torch.cat(pooled.features), metrics.niqe) if pooled.features else None,
            lpips=statistics.fmean(pooled.lpips) if pooled.lpips else None,
            dists=statistics.fmean(pooled.dists) if pooled.dists else None,
            parameters=sum(p.numel() for p in model.parameters()),
            seconds=seconds_per_output(model, scale, device),
        ))
    return rows


def markdown(rows: list[Row], caption: str) -> str:
    """The table, with a caption line saying what was measured and where."""
    lines = [caption, "", "| model | PSNR-Y (dB) | SSIM-Y | NIQE | LPIPS | DISTS | parameters "
             f"| s / {TIMED_SIDE}² output |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        niqe, lpips, dists = (f"{v:.4f}" if v is not None else "n/a" for v in (r.niqe, r.lpips, r.dists))
        lines.append(f"| {r.name} | {r.psnr:.2f} | {r.ssim:.4f} | {niqe} | {lpips} | {dists} | {r.parameters:,} | {r.seconds:.4f} |")
    return "\n".join(lines) + "\n"


def run(config: dict[str, Any], models: Optional[Sequence[str]] = None, out: Optional[Path] = None,
        **overrides: Any) -> Path:
    """Evaluate and write the table; returns its path. `overrides` replace EvaluateSettings fields (None: keep)."""
    apply_cpu_threads(config)
    settings = dataclasses.replace(typed_section(EvaluateSettings, config, "evaluate"),
                                   **{key: value for key, value in overrides.items() if value is not None})
    scale = int(config["scale"])
    if not models:
        student = product_path(config, "student")
        models = ["bicubic"] + ([str(student)] if student.is_file() else [])
    spec = str(config.get("normalisation", "percentile:2,98"))
    found = held_out_images(scenes(config, settings.role), settings.role, scale, settings.crop, settings.whole, spec)
    images = list(itertools.islice(found, settings.limit))
    device = torch.device("cuda" if config.get("device", "auto") != "cpu" and torch.cuda.is_available() else "cpu")
    metrics = MetricSet.from_files(settings.niqe_params, settings.lpips_weights, settings.dists_weights, device)
    rows = evaluate(models, images, scale, device, metrics, settings.lr)
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    what = (f"{len(images)} whole {settings.role} blocks" if settings.whole
            else f"{len(images)} {settings.role} tiles of {settings.crop} px")
    caption = (f"x{scale} on {what}, LR = {LR_DESCRIPTIONS[settings.lr]}, normalisation {spec}; "
               f"models untiled; timings on {where}.")
    out = out or stage_dir(config, "evaluate") / "evaluation.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(markdown(rows, caption), encoding="utf-8")
    return out


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(description="Evaluate SR models (bicubic and student weights) and write a Markdown table.")
    p.add_argument("--config", required=True)
    p.add_argument("--out-dir", help="overrides the config's output_dir")
    p.add_argument("--models", nargs="+", help="'bicubic' and/or student .safetensors files")
    p.add_argument("--role", choices=ROLES)
    p.add_argument("--lr", choices=EVALUATION_LR_KINDS, help="how LR is made from HR (default: evaluate.lr, clean)")
    p.add_argument("--whole", action="store_true", default=None,
                   help="score each held-out block whole, not cut into evaluate.crop tiles (the paper's protocol)")
    p.add_argument("--niqe-params", help="niqe_pris_params.npz (from training.data.sources prepare)")
    p.add_argument("--lpips-weights", help="LPIPS-VGG16 safetensors (see training.losses.perceptual)")
    p.add_argument("--dists-weights", help="DISTS safetensors: VGG16 features + alpha/beta (see training.evaluation.dists)")
    p.add_argument("--table", type=Path, help="where to write the Markdown table")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = p.parse_args(argv)
    try:
        config = load_config(args.config, args.set, args.out_dir)
        path = run(config, args.models, args.table, role=args.role, lr=args.lr, whole=args.whole,
                   niqe_params=args.niqe_params, lpips_weights=args.lpips_weights, dists_weights=args.dists_weights)
    except (SlimDiffSRError, FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return getattr(exc, "exit_code", 2)
    print(path.read_text(encoding="utf-8"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
