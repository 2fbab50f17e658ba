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
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Optional, Sequence

import torch
from torch import nn

from backend.models.weights import file_sha256, read_metadata
from slimdiffsr_qgis.contract import BadInput
from backend.models import StudentConfig, build, feature_channels, load, save

from training.runtime import entry
from training.networks.backbone import load_taesd, upsample_bicubic
from training.data.datasets import data_settings
from training.runtime.config import product_path, run_settings, typed_section
from training.runtime.export import TAKES
from training.networks.distillation import FeatureAdapters, capture, distillation_terms, init_from_teacher, teacher_modules
from training.runtime.data_parallel import Processes
from training.runtime.loop import LoopConfig, Task, trainable_state
from training.losses.statistics import PAPER_BANDWIDTHS
from training.losses.reconstruction import LossWeights, Reconstruction, ReconstructionSettings
from training.networks.teacher import load_teacher

NO_TEACHER = "none"
STUDENT_PRESETS = ("paper", "compact", "tiny")
EXCLUDED_SENSORS_KEY = "excluded_sensors"
"""Metadata key of a student file: the sensor families it never trained on, comma-separated."""


@dataclass(frozen=True)
class StudentWeights(LossWeights):
    """The student's loss weights: the reconstruction terms and the distillation terms (paper: 1 and 0.1)."""

    feature: float = 1.0
    mmd: float = 0.1


@dataclass(frozen=True, kw_only=True)
class StudentSettings(ReconstructionSettings):
    """The config's `student` section (with the reconstruction keys: weights, lpips_weights, dino_folder, ...)."""

    loop: LoopConfig
    weights: StudentWeights = field(default_factory=StudentWeights)
    preset: str = "paper"
    encoder: Optional[str] = None
    """The StudentConfig encoder layout ("hr" or "lr"); None: the preset's (or the init file's)."""
    teacher_weights: str = "default"
    """The teacher's file; "default": the teacher stage's product; "none": No-Dis."""
    init: Optional[str] = None
    """A student weights file to fine-tune from."""
    config: dict = field(default_factory=dict)
    """StudentConfig fields changed from the preset or the init file's, e.g. {lr_skip: true}."""
    distill_taps: Optional[tuple[str, ...]] = None
    """None: every tap of the student."""
    distill_tokens: int = 1024
    mmd_bandwidths: tuple[float, ...] = PAPER_BANDWIDTHS
    """Multiples of the median pairwise distance, one RBF kernel each."""
    taesd_folder: Optional[str] = None
    keep: str = "ema"
    """The weights the product holds: "ema" (loop.ema_decay must be set) or "generator" (the raw weights)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.preset not in STUDENT_PRESETS:
            raise BadInput(f"student.preset must be one of {', '.join(STUDENT_PRESETS)}, not {self.preset!r}")
        if not self.mmd_bandwidths or min(self.mmd_bandwidths) <= 0:
            raise BadInput(f"student.mmd_bandwidths must be a list of positive numbers (e.g. [1.0]), "
                           f"not {list(self.mmd_bandwidths)}")
        unknown = sorted(set(self.config) - {item.name for item in fields(StudentConfig)})
        if unknown:
            raise BadInput(f"student.config: {', '.join(unknown)} is not a StudentConfig field")
        if self.keep not in TAKES:
            raise BadInput(f"student.keep must be one of {', '.join(TAKES)}, not {self.keep!r}")
        if self.keep == "ema" and self.loop.ema_decay <= 0:
            raise BadInput("student.keep is ema but student.loop.ema_decay is 0: set a decay, or keep: generator")


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
        settings = typed_section(StudentSettings, config, "student")
        run = run_settings(config)
        data = data_settings(config)
        self.scale = run.scale
        self.normalisation = run.normalisation
        self.data_manifest = data.manifest or data.folder or "given in code"
        self.excluded_sensors = never_seen(data.exclude_sensors, settings.init)
        self.keep = settings.keep
        student, origin = self._student(settings)
        self.notes.append(origin)
        self.feature_weight, self.mmd_weight = settings.weights.feature, settings.weights.mmd
        self.tokens = settings.distill_tokens
        self.bandwidths = settings.mmd_bandwidths
        self.reconstruction = Reconstruction(settings, "student", run.allow_fallbacks)
        self.critic = self.reconstruction.critic
        self.notes += self.reconstruction.notes
        teacher_setting = settings.teacher_weights
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
            taps = list(settings.distill_taps or feature_channels(student.config))
            self.teacher_blocks = teacher_modules(self.teacher.unet, taps)
            adapters = FeatureAdapters(feature_channels(student.config), self._teacher_channels(student, taps))
            if settings.init is None:
                self._initialise(student, settings.taesd_folder)
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

    def _student(self, settings: StudentSettings) -> tuple[nn.Module, str]:
        changes = dict(settings.config)
        if settings.encoder is not None:
            changes["encoder"] = settings.encoder
        if settings.init:
            return self._fine_tuned(settings.init, changes)
        preset = settings.preset
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
        """The student of `weights` (the EMA) or of the live raw weights, as `student.keep` says."""
        if self.keep == "generator":
            weights = trainable_state(self.generator)
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
            "weights_taken": f"{self.keep} of the last step",
        }
        if self.excluded_sensors:  # a leave-one-family-out file says which family it never saw
            meta[EXCLUDED_SENSORS_KEY] = ",".join(self.excluded_sensors)
        if self.init_fraction is not None:
            meta["teacher_init_fraction"] = f"{self.init_fraction:.4f}"
        save(student, path, meta)
        return path


def families_never_seen(weights: str | Path) -> set[str]:
    """The sensor families a student file states it never trained on (its EXCLUDED_SENSORS_KEY metadata)."""
    listed = read_metadata(weights)["meta"].get(EXCLUDED_SENSORS_KEY, "")
    return {family for family in listed.split(",") if family}


def never_seen(excluded: Sequence[str], init: Optional[str]) -> tuple[str, ...]:
    """The sensor families a run's product never trained on: those the run leaves out that its init never saw
    either. A fine-tune that leaves a family out of a file that trained on it is no leave-one-family-out model."""
    if not init:
        return tuple(excluded)
    earlier = families_never_seen(init)
    return tuple(family for family in excluded if family in earlier)


def _lineage(init: str, meta: dict[str, str]) -> str:
    """What the init file was, so the product still says so after the init path is overwritten (the shipped
    file is both the init and the destination of a fine-tune): its sha256 and its own training record."""
    record = ", ".join(f"{key} {meta[key]}" for key in ("steps", "minutes") if key in meta)
    earlier = meta.get("training_log", "")
    lineage = f"sha256 {file_sha256(init)[:16]}{', ' + record if record else ''}"
    return f"{lineage}; its log: {earlier}" if earlier else lineage


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
