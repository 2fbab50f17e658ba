"""Evaluate SR models on held-out tiles and write a Markdown table.

    python -m training.evaluation.report --config training/configs/tiny_cpu.yaml [--models bicubic W1.safetensors ...]
        [--role test] [--niqe-params data/niqe_pris_params.npz] [--lpips-weights lpips_vgg.safetensors]
        [--dists-weights dists_vgg.safetensors]

Columns: PSNR and SSIM on Y (border = scale cropped), NIQE of the outputs when
its parameters file is given, LPIPS and DISTS when their weights are given, parameters,
and seconds per 512x512 output on this machine. LR is the clean bicubic
downsampling of each HR tile, so every model sees the same input. The default
model list is bicubic plus the student stage's product, when it exists.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

import torch
from torch import nn

from slimdiffsr_qgis.contract import BadInput, SlimDiffSRError
from backend.models import load
from backend.models.bicubic import BicubicUpscaler

from training.runtime.entry import apply_cpu_threads
from training.runtime.config import load_config, product_path, section, stage_dir
from training.data.crops import evaluation_tiles
from training.data.realesrgan_degradation import bicubic_downsample
from training.evaluation.dists import DISTS, load_dists
from training.data.datasets import scenes
from training.evaluation.metrics import NiqeModel, niqe_features, niqe_score, psnr_y, ssim_y
from training.losses.perceptual import LPIPS, build_perceptual

TIMED_SIDE = 512


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


@torch.no_grad()
def seconds_per_output(model: nn.Module, scale: int, device: torch.device, repeats: int = 3) -> float:
    """Median wall time of one 512x512 output (after one warm-up run)."""
    lr = torch.rand(1, 3, TIMED_SIDE // scale, TIMED_SIDE // scale, device=device)
    model(lr)
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        model(lr)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


@torch.no_grad()
def evaluate(models: Sequence[str], tiles: list[torch.Tensor], scale: int, device: torch.device,
             niqe_model: Optional[NiqeModel], lpips: Optional[LPIPS], dists: Optional[DISTS] = None) -> list[Row]:
    """Figures for each model over the HR tiles ([3, H, W] in [0, 1])."""
    if not tiles:
        raise BadInput("no evaluation tiles: the chosen blocks hold no tile without nodata or cloud")
    rows = []
    for spec in models:
        name, model = model_from(spec, scale)
        model.to(device)
        psnrs, ssims, lpips_values, dists_values, features = [], [], [], [], []
        for hr in tiles:
            lr = bicubic_downsample(hr[None], scale).clamp(0, 1).to(device)
            sr = model(lr).clamp(0, 1)[0].cpu()
            psnrs.append(psnr_y(sr, hr, border=scale))
            ssims.append(ssim_y(sr, hr, border=scale))
            if lpips is not None:
                lpips_values.append(float(lpips(sr[None].to(device), hr[None].to(device))))
            if dists is not None:
                dists_values.append(float(dists(sr[None].to(device), hr[None].to(device))))
            if niqe_model is not None:
                features.append(niqe_features(sr, niqe_model, border=scale))
        rows.append(Row(
            name=name, psnr=statistics.fmean(psnrs), ssim=statistics.fmean(ssims),
            niqe=niqe_score(torch.cat(features), niqe_model) if features else None,
            lpips=statistics.fmean(lpips_values) if lpips_values else None,
            dists=statistics.fmean(dists_values) if dists_values else None,
            parameters=sum(p.numel() for p in model.parameters()),
            seconds=seconds_per_output(model, scale, device),
        ))
    return rows


def markdown(rows: list[Row], caption: str) -> str:
    """The table, with a caption line saying what was measured and where."""
    lines = [caption, "", "| model | PSNR-Y (dB) | SSIM-Y | NIQE | LPIPS | DISTS | parameters | s / 512² output |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        niqe, lpips, dists = (f"{v:.4f}" if v is not None else "n/a" for v in (r.niqe, r.lpips, r.dists))
        lines.append(f"| {r.name} | {r.psnr:.2f} | {r.ssim:.4f} | {niqe} | {lpips} | {dists} | {r.parameters:,} | {r.seconds:.4f} |")
    return "\n".join(lines) + "\n"


def run(config: dict[str, Any], models: Optional[Sequence[str]] = None, role: Optional[str] = None,
        niqe_params: Optional[str] = None, lpips_weights: Optional[str] = None, dists_weights: Optional[str] = None,
        out: Optional[Path] = None) -> Path:
    """Evaluate and write the table; returns its path."""
    apply_cpu_threads(config)
    settings = section(config, "evaluate")
    scale = int(config["scale"])
    role = role or settings.get("role", "test")
    if not models:
        student = product_path(config, "student")
        models = ["bicubic"] + ([str(student)] if student.is_file() else [])
    spec = str(config.get("normalisation", "percentile:2,98"))
    limit = int(settings.get("limit", 100))
    tiles = []
    for tile in evaluation_tiles(scenes(config, role), role=role, tile=int(settings.get("crop", 256)), spec=spec):
        tiles.append(torch.from_numpy(tile.hr))
        if len(tiles) >= limit:
            break
    niqe_params = niqe_params or settings.get("niqe_params")
    device = torch.device("cuda" if config.get("device", "auto") != "cpu" and torch.cuda.is_available() else "cpu")
    lpips_weights = lpips_weights or settings.get("lpips_weights")
    lpips = build_perceptual(lpips_weights)[0].to(device) if lpips_weights else None
    dists_weights = dists_weights or settings.get("dists_weights")
    dists = load_dists(dists_weights).to(device) if dists_weights else None
    rows = evaluate(models, tiles, scale, device, NiqeModel(niqe_params) if niqe_params else None, lpips, dists)
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    caption = (f"x{scale} on {len(tiles)} {role} tiles of {int(settings.get('crop', 256))} px, LR = bicubic "
               f"downsampling, normalisation {spec}; timings on {where}.")
    out = out or stage_dir(config, "evaluate") / "evaluation.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(markdown(rows, caption), encoding="utf-8")
    return out


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(description="Evaluate SR models (bicubic and student weights) and write a Markdown table.")
    p.add_argument("--config", required=True)
    p.add_argument("--out-dir", help="overrides the config's output_dir")
    p.add_argument("--models", nargs="+", help="'bicubic' and/or student .safetensors files")
    p.add_argument("--role", choices=["train", "validation", "test"])
    p.add_argument("--niqe-params", help="niqe_pris_params.npz (from training.data.sources prepare)")
    p.add_argument("--lpips-weights", help="LPIPS-VGG16 safetensors (see training.losses.perceptual)")
    p.add_argument("--dists-weights", help="DISTS safetensors: VGG16 features + alpha/beta (see training.evaluation.dists)")
    p.add_argument("--table", type=Path, help="where to write the Markdown table")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = p.parse_args(argv)
    try:
        config = load_config(args.config, args.set, args.out_dir)
        path = run(config, args.models, args.role, args.niqe_params, args.lpips_weights, args.dists_weights, args.table)
    except (SlimDiffSRError, FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return getattr(exc, "exit_code", 2)
    print(path.read_text(encoding="utf-8"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
