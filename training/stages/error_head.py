"""Trains the error head (backend/models/error_head.py) for a frozen student and writes it as safetensors.

    python -m training.stages.error_head --student resources/weights/slimdiffsr_x4.safetensors \
        --out resources/weights/slimdiffsr_x4.error.safetensors --steps 3733 --minutes 30 [--exclude-sensors neon]

The student is frozen, so its outputs are computed once: (LR, SR, HR) crops of
the manifest's TRAIN blocks, clean and Real-ESRGAN-degraded LR mixed as the
student was trained, are cached under --cache keyed by the student's sha256 and
the crop settings. Training then only runs the head, on random LR sub-crops of
the cached ones, with the pinball loss at the median (`--statistic median`, the
default) or the Laplace negative log-likelihood (`--statistic mean`); a run on one
CPU thread takes minutes. The learning rate follows a cosine over --steps or --minutes, whichever ends first;
a run that ends by its step count is reproducible. `--exclude-sensors` leaves families out of the training
crops, for the held-out-family calibration in benchmarks.calibration.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch

from backend.models import load, read_metadata
from backend.consistency import back_project
from backend.models.error_head import (MEAN, MEDIAN, OUTPUT_KEY, STATISTIC_KEY, TRAINED_ON_KEY, ErrorHead,
                                       ErrorHeadConfig, laplace_nll, median_loss, output_kind, save_head)
from backend.models.weights import file_sha256
from training.data.crops import (DEGRADATIONS, CropDataset, CropSettings, dataset_options, make_lr,
                                 scenes_from_manifest)
from training.data.sensor_degradation import blur, gaussian_1d

CROP = 192
"""HR side of a cached crop: 48 LR pixels, larger than the head's receptive field and the training sub-crop."""
SUB_CROP = 32
"""LR side of a training sub-crop."""
DEGRADED_FRACTION = 0.5
"""The benchmark weighs clean and degraded LR equally, and the student's last runs used 0.5-0.7."""
LOSSES = {MEDIAN: median_loss, MEAN: laplace_nll}
"""The loss that makes the head's output each statistic."""
STATISTIC_CHOICES = {"median": MEDIAN, "mean": MEAN}


def log_uniform(spread: float, uniform: torch.Tensor) -> torch.Tensor:
    """Factors in [1/spread, spread], log-uniform for `uniform` draws in [0, 1): a gain as likely to halve as to
    double, which is what both jitters want."""
    return torch.exp(math.log(spread) * (2 * uniform - 1))


def sharpen(hr: torch.Tensor, scale: int, gain: float) -> torch.Tensor:
    """[3, H, W] HR with the detail above about the LR Nyquist multiplied by `gain` (below 1 a blurrier sensor,
    above 1 a sharper one), clamped to [0, 1]: a Gaussian of scale / 4 HR pixels splits it into what the LR can
    carry and what it cannot."""
    smooth = blur(hr[None], gaussian_1d(scale / 4))[0]
    return (smooth + gain * (hr - smooth)).clamp(0.0, 1.0)


def resharpened(dataset: CropDataset, item: dict, index: int, seed: int, sharpness_jitter: float) -> dict:
    """`item` as a sensor of another sharpness would have seen it: the HR through `sharpen` by a gain drawn
    log-uniformly in [1/G, G], its LR made anew from it by the item's own LR kind."""
    generator = torch.Generator().manual_seed(seed * 1_000_003 + index)
    gain = float(log_uniform(sharpness_jitter, torch.rand((), generator=generator)))
    hr = sharpen(item["hr"], dataset.scale, gain)
    lr = make_lr(hr[None], dataset.scale, item["lr_kind"], generator, dataset.degradation,
                 dataset.sensor_settings)[0]
    return {**item, "hr": hr, "lr": lr}


def precompute(student: torch.nn.Module, manifest: Path, count: int, crop: int, degraded_fraction: float,
               seed: int, batch: int = 8, consistency: bool = False,
               sampling: CropSettings = CropSettings(), sharpness_jitter: float = 1.0) -> dict:
    """{"lr", "sr", "hr" (float16 tensors), "sensor" (list), "degraded" (bool tensor)} of `count` train crops;
    with `consistency` the SR is back-projected to the LR, as the engine writes it by default. `sampling`'s
    remote-sensing options (single-band crops, the degradation chain) draw the crops as a student's data
    section would; with `sharpness_jitter` G > 1 each crop is `resharpened`, so the head sees sensors sharper
    and blurrier than the manifest's."""
    scenes = scenes_from_manifest(manifest)
    dataset = CropDataset(scenes, crop=crop, scale=student.scale, role="train", length=count, seed=seed,
                          degraded_fraction=degraded_fraction, **dataset_options(sampling, manifest))
    lrs, srs, hrs, sensors, degraded = [], [], [], [], []
    for start in range(0, count, batch):
        items = [dataset[i] for i in range(start, min(count, start + batch))]
        if sharpness_jitter > 1:
            items = [resharpened(dataset, item, start + i, seed, sharpness_jitter) for i, item in enumerate(items)]
        lr = torch.stack([item["lr"] for item in items])
        with torch.inference_mode():
            sr = student(lr)
            sr = (back_project(sr, lr, student.scale) if consistency else sr).clamp(0, 1)
        lrs.append(lr.half())
        srs.append(sr.half())
        hrs.append(torch.stack([item["hr"] for item in items]).half())
        sensors += [item["sensor"] for item in items]
        degraded += [item["degraded"] for item in items]
    return {"lr": torch.cat(lrs), "sr": torch.cat(srs), "hr": torch.cat(hrs), "sensor": sensors,
            "degraded": torch.tensor(degraded)}


def cached_crops(student_path: Path, manifest: Path, cache: Path, count: int, crop: int,
                 degraded_fraction: float, seed: int, consistency: bool = False,
                 sampling: CropSettings = CropSettings(), sharpness_jitter: float = 1.0) -> dict:
    """The precomputed crops for this student and settings, computed and saved on first use."""
    sha = file_sha256(str(student_path))
    suffix = "_consistent" if consistency else ""
    if sampling != CropSettings():
        suffix += f"_b{sampling.single_band_fraction:g}_{sampling.degradation}"
    if sharpness_jitter > 1:
        suffix += f"_sharp{sharpness_jitter:g}"
    path = cache / f"crops_{sha[:12]}_n{count}_c{crop}_d{degraded_fraction:g}_s{seed}{suffix}.pt"
    if path.exists():
        return torch.load(path, weights_only=True)
    student = load(student_path)
    start = time.monotonic()
    crops = precompute(student, manifest, count, crop, degraded_fraction, seed, consistency=consistency,
                       sampling=sampling, sharpness_jitter=sharpness_jitter)
    print(f"precomputed {count} crops in {time.monotonic() - start:.0f} s -> {path}", file=sys.stderr)
    cache.mkdir(parents=True, exist_ok=True)
    torch.save(crops, path)
    return crops


def sample_batch(crops: dict, indices: torch.Tensor, scale: int, sub: int, generator: torch.Generator,
                 contrast_jitter: float = 1.0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(LR, SR, HR) float32 sub-crops of side `sub` LR pixels at random positions of the crops `indices`.

    With `contrast_jitter` G > 1, each sub-crop's contrast about its LR mean is multiplied by a factor drawn
    log-uniformly in [1/G, G], alike in LR, SR and HR, so its error scales by the same factor: a family's scenes
    then stop teaching the head that a given contrast means a given error (docs/trust.md measures why)."""
    side = crops["lr"].shape[-1]
    lr, sr, hr = [], [], []
    for index in indices.tolist():
        y, x = (int(v) for v in torch.randint(0, side - sub + 1, (2,), generator=generator))
        lr.append(crops["lr"][index, :, y:y + sub, x:x + sub])
        window = (slice(None), slice(y * scale, (y + sub) * scale), slice(x * scale, (x + sub) * scale))
        sr.append(crops["sr"][index][window])
        hr.append(crops["hr"][index][window])
    lr, sr, hr = torch.stack(lr).float(), torch.stack(sr).float(), torch.stack(hr).float()
    if contrast_jitter > 1:
        gain = log_uniform(contrast_jitter, torch.rand(len(indices), 1, 1, 1, generator=generator))
        mean = lr.mean(dim=(1, 2, 3), keepdim=True)
        lr, sr, hr = ((mean + gain * (values - mean)) for values in (lr, sr, hr))
    return lr, sr, hr


def train(crops: dict, config: ErrorHeadConfig, minutes: float, max_steps: int, batch: int = 16,
          learning_rate: float = 2e-3, seed: int = 0, log_every: int = 100,
          statistic: str = MEDIAN, contrast_jitter: float = 1.0) -> tuple[ErrorHead, int]:
    """A head fitted to `crops` for at most `minutes` or `max_steps`, learning rate on a cosine over the budget,
    its output the `statistic` of the absolute error (MEDIAN or MEAN), its sub-crops' contrast jittered by up to
    `contrast_jitter` (sample_batch)."""
    loss_of = LOSSES[statistic]
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    head = ErrorHead(config).train()
    optimiser = torch.optim.Adam(head.parameters(), lr=learning_rate)
    start, step, running = time.monotonic(), 0, []
    while step < max_steps:
        progress = max(step / max_steps, (time.monotonic() - start) / (60 * minutes))
        if progress >= 1:
            break
        for group in optimiser.param_groups:
            group["lr"] = learning_rate * 0.5 * (1 + math.cos(math.pi * progress))
        indices = torch.randint(0, len(crops["sensor"]), (batch,), generator=generator)
        lr, sr, hr = sample_batch(crops, indices, config.scale, SUB_CROP, generator, contrast_jitter)
        loss = loss_of(head(lr, sr), sr, hr)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        running.append(loss.item())
        step += 1
        if step % log_every == 0:
            print(f"step {step} loss {np.mean(running):.4f} ({time.monotonic() - start:.0f} s)", file=sys.stderr)
            running = []
    return head.eval(), step


def keep_sensors(crops: dict, exclude: Sequence[str]) -> dict:
    """The crops whose sensor family is not in `exclude`."""
    keep = [i for i, sensor in enumerate(crops["sensor"]) if sensor not in exclude]
    if not keep:
        raise SystemExit(f"--exclude-sensors {' '.join(exclude)} leaves no training crop")
    index = torch.tensor(keep)
    return {"lr": crops["lr"][index], "sr": crops["sr"][index], "hr": crops["hr"][index],
            "sensor": [crops["sensor"][i] for i in keep], "degraded": crops["degraded"][index]}


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.stages.error_head", description=__doc__.splitlines()[0])
    parser.add_argument("--student", type=Path, required=True, help="the frozen student's weights (safetensors)")
    parser.add_argument("--out", type=Path, required=True, help="where to write the head (safetensors)")
    parser.add_argument("--exclude-sensors", nargs="*", default=[], metavar="FAMILY",
                        help="sensor families left out of training (e.g. neon), to score them as held out")
    parser.add_argument("--minutes", type=float, default=6.0, help="training time budget")
    parser.add_argument("--steps", type=int, default=20_000, help="at most this many steps")
    parser.add_argument("--data", type=Path, default=Path("data/manifest.json"), help="data manifest")
    parser.add_argument("--crops", type=int, default=1600, help="number of precomputed training crops")
    parser.add_argument("--channels", type=int, default=ErrorHeadConfig.channels, help="head width")
    parser.add_argument("--dilations", type=int, nargs="+", default=list(ErrorHeadConfig.dilations),
                        help="one dilation per 3x3 conv of the head")
    parser.add_argument("--cache", type=Path, default=Path("runs/error_head"), help="folder of precomputed crops")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--consistency", action="store_true",
                        help="learn the error of the output back-projected to the LR (the engine's default output)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--single-band-fraction", type=float, default=0.0,
                        help="share of crops from the manifest's single-band files (every Sentinel-2 / Landsat 8 band)")
    parser.add_argument("--statistic", default="median", choices=sorted(STATISTIC_CHOICES),
                        help="what the head predicts: the median absolute error (pinball loss; its calibration is "
                             "the share of errors below it) or the mean (Laplace NLL)")
    parser.add_argument("--degradation", default=CropSettings.degradation, choices=DEGRADATIONS,
                        help="the chain that degrades the degraded crops")
    parser.add_argument("--contrast-jitter", type=float, default=1.0, metavar="G",
                        help="multiply each training sub-crop's contrast by a factor drawn in [1/G, G] "
                             "(1: off), so a head reads error from texture, not from a family's contrast")
    parser.add_argument("--sharpness-jitter", type=float, default=1.0, metavar="G",
                        help="multiply each training crop's detail beyond the LR Nyquist by a factor drawn in "
                             "[1/G, G] before its LR is made (1: off), so the head sees sensors sharper and "
                             "blurrier than the manifest's")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    student_scale = read_metadata(args.student)["config"]["scale"]
    sampling = CropSettings(degradation=args.degradation, single_band_fraction=args.single_band_fraction)
    crops = cached_crops(args.student, args.data, args.cache, args.crops, CROP, DEGRADED_FRACTION, args.seed,
                         args.consistency, sampling, args.sharpness_jitter)
    crops = keep_sensors(crops, args.exclude_sensors)
    config = ErrorHeadConfig(scale=student_scale, channels=args.channels, dilations=tuple(args.dilations))
    statistic = STATISTIC_CHOICES[args.statistic]
    head, steps = train(crops, config, args.minutes, args.steps, seed=args.seed, statistic=statistic,
                        contrast_jitter=args.contrast_jitter)
    families = sorted(set(crops["sensor"]))
    meta = {TRAINED_ON_KEY: ",".join(families), "excluded_sensors": ",".join(args.exclude_sensors),
            "steps": str(steps), "crops": str(len(crops["sensor"])), "degraded_fraction": str(DEGRADED_FRACTION),
            "degradation": args.degradation, "single_band_fraction": f"{args.single_band_fraction:g}",
            "contrast_jitter": f"{args.contrast_jitter:g}", "sharpness_jitter": f"{args.sharpness_jitter:g}",
            "student": args.student.name, OUTPUT_KEY: output_kind(args.consistency), STATISTIC_KEY: statistic,
            "command": "python -m training.stages.error_head " + " ".join(argv if argv is not None else sys.argv[1:])}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    save_head(head, args.out, file_sha256(str(args.student)), meta)
    print(f"wrote {args.out}: {sum(p.numel() for p in head.parameters())} parameters, {steps} steps, "
          f"trained on {', '.join(families)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
