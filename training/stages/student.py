"""Stage 2 entry point: train the SlimDiffSR student and write student.safetensors for the backend.

    python -m training.stages.student --config training/configs/tiny_cpu.yaml

With a teacher (`student.teacher_weights`: the teacher stage's product by
default) the loss is the reconstruction terms plus Σ_taps [MSE(φ(f_stu), f_tea)
+ 0.1·MMD²], MMD with one RBF kernel at the median-heuristic bandwidth
(`student.mmd_bandwidths` lists multiples of it for a mixture), and the student
starts from the teacher's UNet weights wherever a parameter maps to a teacher
tensor of the same shape (and from TAESD's with `student.taesd_folder`); the
initialised fraction is logged and stored in the weights file as
`teacher_init_fraction`. With `teacher_weights: none` it is the paper's No-Dis
ablation (Table 7): reconstruction terms only, which needs no SD-2.1.
`student.init` fine-tunes from any student weights file (e.g. the shipped one).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Optional, Sequence

import torch
from torch import nn

from backend.models.weights import file_sha256
from slimdiffsr_qgis.contract import BadInput
from backend.models import StudentConfig, build, feature_channels, load, save

from training.runtime import entry
from training.networks.backbone import load_taesd, upsample_bicubic
from training.runtime.config import allow_fallbacks, product_path, section
from training.networks.distillation import FeatureAdapters, capture, distillation_terms, init_from_teacher, teacher_modules
from training.runtime.data_parallel import Processes
from training.runtime.loop import Task
from training.losses.statistics import PAPER_BANDWIDTHS
from training.losses.reconstruction import Reconstruction
from training.networks.teacher import load_teacher

NO_TEACHER = "none"
STUDENT_PRESETS = ("paper", "compact", "tiny")


class StudentAndAdapters(nn.Module):
    """What stage 2 optimises: the student and, when distilling, the adapters φ."""

    def __init__(self, student: nn.Module, adapters: Optional[FeatureAdapters]) -> None:
        super().__init__()
        self.student = student
        self.adapters = adapters


class StudentTask(Task):
    """Full fine-tuning of the student, distilled from the teacher or not (No-Dis)."""

    name = "student"

    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__()
        settings = section(config, "student")
        self.scale = int(config["scale"])
        self.normalisation = str(config.get("normalisation", "percentile:2,98"))
        self.data_manifest = str(section(config, "data").get("manifest") or section(config, "data").get("folder") or "given in code")
        student, origin = self._student(settings)
        self.notes.append(origin)
        weights = {"feature": 1.0, "mmd": 0.1, **(settings.get("weights") or {})}
        self.feature_weight, self.mmd_weight = float(weights["feature"]), float(weights["mmd"])
        self.tokens = int(settings.get("distill_tokens", 1024))
        self.bandwidths = _bandwidths(settings.get("mmd_bandwidths", PAPER_BANDWIDTHS))
        self.reconstruction = Reconstruction(settings, "student", allow_fallbacks(config))
        self.critic = self.reconstruction.critic
        self.notes += self.reconstruction.notes
        teacher_setting = str(settings.get("teacher_weights") or "default")
        self.teacher = self.estimator = None
        self.init_fraction: Optional[float] = None
        adapters = None
        if teacher_setting.lower() == NO_TEACHER:
            self.teacher_used = "none (No-Dis)"
            self.notes.append("distillation: none (No-Dis): reconstruction losses only")
        else:
            path = product_path(config, "teacher", None if teacher_setting == "default" else teacher_setting)
            self.teacher, self.estimator, _ = load_teacher(path)
            self.teacher_used = str(path)
            taps = list(settings.get("distill_taps") or feature_channels(student.config))
            self.teacher_blocks = teacher_modules(self.teacher.unet, taps)
            adapters = FeatureAdapters(feature_channels(student.config), self._teacher_channels(student, taps))
            if settings.get("init") is None:
                self._initialise(student, settings.get("taesd_folder"))
            kernel = ("one RBF kernel, σ = the median pairwise distance" if self.bandwidths == (1.0,)
                      else f"RBF kernels at σ = {list(self.bandwidths)} x the median pairwise distance")
            self.notes.append(f"distillation: teacher {path}; taps {', '.join(taps)}; MSE + {self.mmd_weight}·MMD² ({kernel})")
        self.pretrained.update(teacher=self.teacher_used, **self.reconstruction.pretrained)
        self.generator = StudentAndAdapters(student, adapters)

    def _initialise(self, student: nn.Module, taesd_folder: Optional[str]) -> None:
        """Start the student from the teacher's UNet (and TAESD's VAE layers, when given); log the fraction."""
        taesd = load_taesd(taesd_folder) if taesd_folder else None
        self.init_fraction = init_from_teacher(student, self.teacher.unet, taesd)
        self.pretrained["taesd"] = str(taesd_folder) if taesd else "none: encoder/decoder from scratch"
        sources = f"the teacher's UNet and TAESD {taesd_folder}" if taesd else "the teacher's UNet (no taesd_folder)"
        self.notes.append(f"student: {self.init_fraction:.2%} of parameters initialised from {sources}")

    def _student(self, settings: dict[str, Any]) -> tuple[nn.Module, str]:
        changes = dict(settings.get("config") or {})  # any StudentConfig field, e.g. {residual: true}
        if "encoder" in settings:
            changes["encoder"] = settings["encoder"]
        init = settings.get("init")
        if init:
            return self._fine_tuned(str(init), changes)
        preset = settings.get("preset", "paper")
        if preset not in STUDENT_PRESETS:
            raise BadInput(f"student.preset must be one of {', '.join(STUDENT_PRESETS)}, not {preset!r}")
        config = _changed(getattr(StudentConfig, preset)(self.scale), changes)
        return build(config), (f"student: new {preset} x{self.scale} student, {config.encoder} encoder layout"
                               f"{', bicubic residual' if config.residual else ''}{', LR skip' if config.lr_skip else ''}")

    def _fine_tuned(self, init: str, changes: dict[str, Any]) -> tuple[nn.Module, str]:
        """The student of `init`, rebuilt with `changes` when they keep every parameter's shape (e.g. lr_skip).

        Another scale is such a change: the compact student's parameters have the same shapes at x2, x4 and x8
        (only the encoder's strides differ), so x2 and x8 weights start from the x4 file's.
        """
        student = load(init).train()
        origin = f"student: fine-tuning from {init} ({_lineage(init, student.meta)})"
        if student.config.scale != self.scale:
            changes = {**changes, "scale": self.scale}
            origin += f", trained for x{student.config.scale}, now x{self.scale}"
        if not changes:
            return student, origin
        changed = build(_changed(student.config, changes)).train()
        try:
            changed.load_state_dict(student.state_dict())
        except RuntimeError as error:
            raise BadInput(f"student.config {changes} changes the shapes of {init}'s parameters: {error}") from None
        return changed, f"{origin} with {changes}"

    def _teacher_channels(self, student: nn.Module, taps: list[str]) -> dict[str, int]:
        """Run the teacher once on a small input to learn its tap widths (diffusers blocks do not expose them)."""
        size = 8 * student.config.lr_multiple * self.scale
        with torch.no_grad():
            features = self._teacher_features(torch.rand(1, 3, size // self.scale, size // self.scale),
                                              torch.rand(1, 3, size, size))
        return {tap: int(features[tap].shape[1]) for tap in taps}

    @torch.no_grad()
    def _teacher_features(self, lr: torch.Tensor, hr: torch.Tensor) -> dict[str, torch.Tensor]:
        z_gt = self.teacher.encode(hr)
        z_lr = self.teacher.encode(upsample_bicubic(lr, self.scale))
        _, log_var = self.estimator(z_lr)
        alpha_bar = self.teacher.predictor(z_gt, log_var.exp())
        with capture(self.teacher_blocks) as features:
            self.teacher.denoise(z_lr, alpha_bar)
        return dict(features)

    def to(self, device: torch.device) -> None:
        super().to(device)
        self.reconstruction.to(device)
        if self.teacher is not None:
            self.teacher.to(device)
            self.estimator.to(device)

    def generator_losses(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        lr, hr = batch["lr"], batch["hr"]
        student = self.generator.student
        if self.teacher is None:
            terms = self.reconstruction.generator_terms(student(lr), hr)
        else:
            output, student_features = student.forward_features(lr)
            terms = self.reconstruction.generator_terms(output, hr)
            mse, mmd = distillation_terms(student_features, self._teacher_features(lr, hr), self.generator.adapters,
                                          self.tokens, self.bandwidths)
            terms["feature"] = self.feature_weight * mse
            terms["mmd"] = self.mmd_weight * mmd
        return {"total": sum(terms.values()), **terms}

    def critic_losses(self) -> dict[str, torch.Tensor]:
        return self.reconstruction.critic_terms()

    def export(self, directory: Path, weights: dict[str, torch.Tensor], provenance: dict[str, str]) -> Path:
        student = copy.deepcopy(self.generator.student).cpu()
        prefix = "student."
        student.load_state_dict({k[len(prefix):]: v.cpu() for k, v in weights.items() if k.startswith(prefix)})
        path = directory / "student.safetensors"
        meta = {
            **provenance,
            "normalisation": self.normalisation,
            "data": self.data_manifest,
            "teacher": self.teacher_used,
            "training_log": " | ".join(self.notes),
        }
        if self.init_fraction is not None:
            meta["teacher_init_fraction"] = f"{self.init_fraction:.4f}"
        save(student, path, meta)
        return path


def _lineage(init: str, meta: dict[str, str]) -> str:
    """What the init file was, so the product still says so after the init path is overwritten (the shipped
    file is both the init and the destination of a fine-tune): its sha256 and its own training record."""
    record = ", ".join(f"{key} {meta[key]}" for key in ("steps", "minutes") if key in meta)
    earlier = meta.get("training_log", "")
    lineage = f"sha256 {file_sha256(init)[:16]}{', ' + record if record else ''}"
    return f"{lineage}; its log: {earlier}" if earlier else lineage


def _bandwidths(value: Any) -> tuple[float, ...]:
    """student.mmd_bandwidths: a non-empty list of positive multiples of the median distance."""
    try:
        bandwidths = tuple(float(b) for b in value)
    except (TypeError, ValueError):
        bandwidths = ()
    if not bandwidths or min(bandwidths) <= 0:
        raise BadInput(f"student.mmd_bandwidths must be a list of positive numbers (e.g. [1.0]), not {value!r}")
    return bandwidths


def _changed(config: StudentConfig, changes: dict[str, Any]) -> StudentConfig:
    try:
        return config.replace(**changes)
    except (TypeError, ValueError) as error:
        raise BadInput(f"student.config: {error}") from None


def build_task(config: dict[str, Any], processes: Processes) -> StudentTask:
    return StudentTask(config)


def main(argv: Optional[Sequence[str]] = None) -> int:
    return entry.main("student", build_task, "Stage 2: train the SlimDiffSR student (distilled or No-Dis).", argv)


if __name__ == "__main__":
    raise SystemExit(main())
