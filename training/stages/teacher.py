"""Stage 1 entry point: train the uncertainty-guided single-step teacher and write teacher.safetensors.

    python -m training.stages.teacher --config training/configs/tiny_cpu.yaml

Needs the stage-0 estimator (`teacher.uncertainty_weights`, default: the
uncertainty stage's product). Loss: L1 + 2.5·LPIPS + 0.25·GAN + λ_TV·TV(ᾱ),
TV the squared-L2 total variation of the ᾱ map (Eq. 21); LoRA adapters, the
noise-level predictor and the discriminator train.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

import torch

from training.runtime import entry
from training.networks.backbone import BackboneSettings, load_backbone, upsample_bicubic
from training.runtime.config import product_path, run_settings, typed_section
from training.runtime.data_parallel import Processes
from training.runtime.loop import LoopConfig, Task
from training.losses.statistics import total_variation
from training.losses.reconstruction import Reconstruction, ReconstructionSettings
from training.networks.teacher import Teacher, TeacherConfig, save_teacher
from training.networks.uncertainty_estimator import load_uncertainty


TIME_NOTES = {
    "mean": "teacher: spatial t* handled as mean t* for the UNet's time embedding and per-pixel ᾱ in the one-step "
            "update; losses.csv column t_spread is the mean per-map standard deviation of t* this ignores",
    "spatial": "teacher: spatial t* embedded per pixel inside every UNet ResBlock (beside the mean t* the UNet "
               "is called with) and per-pixel ᾱ in the one-step update; losses.csv column t_spread: its spread",
}


@dataclass(frozen=True, kw_only=True)
class TeacherSettings(ReconstructionSettings):
    """The config's `teacher` section (with the reconstruction keys: weights, lpips_weights, dino_folder, ...)."""

    loop: LoopConfig
    uncertainty_weights: Optional[str] = None
    """The stage-0 estimator; None: the uncertainty stage's product."""
    model: TeacherConfig = field(default_factory=TeacherConfig)
    tv_weight: float = 0.01


class TeacherTask(Task):
    """LoRA fine-tuning of the diffusion backbone into a one-step SR teacher."""

    name = "teacher"

    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__()
        options = typed_section(TeacherSettings, config, "teacher")
        source = typed_section(BackboneSettings, config, "backbone")
        self.backbone = load_backbone(source.source, source.prediction_type)
        estimator_path = product_path(config, "uncertainty", options.uncertainty_weights)
        self.estimator = load_uncertainty(estimator_path)
        run = run_settings(config)
        self.scale = run.scale
        self.teacher_config = options.model
        self.generator = Teacher(self.backbone, self.teacher_config)
        self.tv_weight = options.tv_weight
        self.reconstruction = Reconstruction(options, "teacher", run.allow_fallbacks)
        self.critic = self.reconstruction.critic
        self.pretrained = {"backbone": self.backbone.source, **self.reconstruction.pretrained}
        trainable = sum(p.numel() for p in self.generator.parameters() if p.requires_grad)
        self.notes += self.backbone.notes + self.reconstruction.notes + [
            f"uncertainty estimator: {estimator_path}",
            f"teacher: LoRA rank {self.teacher_config.unet_lora_rank} (UNet) / {self.teacher_config.vae_lora_rank} "
            f"(VAE decoder); {trainable} trainable parameters; prediction_type {self.backbone.prediction_type}",
            TIME_NOTES[self.teacher_config.time_embedding],
        ]

    def to(self, device: torch.device) -> None:
        super().to(device)
        self.estimator.to(device)
        self.reconstruction.to(device)

    def generator_losses(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        hr = batch["hr"]
        z_gt = self.generator.encode(hr)
        z_lr = self.generator.encode(upsample_bicubic(batch["lr"], self.scale))
        with torch.no_grad():
            _, log_var = self.estimator(z_lr)
        out = self.generator(z_lr, z_gt, log_var.exp())
        terms = self.reconstruction.generator_terms(out["hr"], hr)
        terms["tv"] = self.tv_weight * total_variation(out["alpha_bar"])
        total = sum(terms.values())
        t_map = out["t_map"].detach()
        return {"total": total, **terms, "t_mean": t_map.mean(), "t_spread": t_map.flatten(1).std(dim=1).mean()}

    def critic_losses(self) -> dict[str, torch.Tensor]:
        return self.reconstruction.critic_terms()

    def export(self, directory: Path, weights: dict[str, torch.Tensor], provenance: dict[str, str]) -> Path:
        path = directory / "teacher.safetensors"
        notes = {"run_log": " | ".join(self.notes)}
        save_teacher(path, weights, self.estimator, self.teacher_config, self.backbone, {**provenance, **notes})
        return path


def build_task(config: dict[str, Any], processes: Processes) -> TeacherTask:
    return TeacherTask(config)


def main(argv: Optional[Sequence[str]] = None) -> int:
    return entry.main("teacher", build_task, "Stage 1: train the uncertainty-guided single-step teacher.", argv)


if __name__ == "__main__":
    raise SystemExit(main())
