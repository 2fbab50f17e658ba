"""Stage 0 entry point: train the latent uncertainty estimator (Eq. 5) and write uncertainty.safetensors.

    python -m training.stages.uncertainty --config training/configs/tiny_cpu.yaml

The VAE encoder comes from the configured backbone and stays frozen, so the
estimator learns in the same latent space the teacher will use.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

import torch
from safetensors.torch import save_file

from training.runtime import entry
from training.networks.backbone import BackboneSettings, encode_latent, load_backbone, upsample_bicubic
from training.runtime.config import run_settings, typed_section
from training.runtime.data_parallel import Processes
from training.runtime.loop import LoopConfig, Task
from training.networks.uncertainty_estimator import UncertaintyConfig, UncertaintyEstimator, uncertainty_nll


@dataclass(frozen=True)
class UncertaintySettings:
    """The config's `uncertainty` section."""

    loop: LoopConfig
    model: UncertaintyConfig = field(default_factory=UncertaintyConfig)


class UncertaintyTask(Task):
    """Fits UE(z_lr) -> (z_mean, log z_var) to the HR latents."""

    name = "uncertainty"

    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__()
        source = typed_section(BackboneSettings, config, "backbone")
        backbone = load_backbone(source.source, source.prediction_type)
        self.notes += backbone.notes
        self.pretrained = {"backbone": backbone.source}
        self.scale = run_settings(config).scale
        self.vae = backbone.vae.requires_grad_(False).eval()
        model = typed_section(UncertaintySettings, config, "uncertainty").model
        model.latent_channels = int(self.vae.config.latent_channels)
        self.model_config = model
        self.generator = UncertaintyEstimator(model)

    def to(self, device: torch.device) -> None:
        super().to(device)
        self.vae.to(device)

    def generator_losses(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        with torch.no_grad():
            z_gt = encode_latent(self.vae, batch["hr"])
            z_lr = encode_latent(self.vae, upsample_bicubic(batch["lr"], self.scale))
        z_mean, log_var = self.generator(z_lr)
        nll = uncertainty_nll(z_gt, z_mean, log_var)
        return {"total": nll, "nll": nll, "squared_error": (z_gt - z_mean).pow(2).mean().detach(),
                "log_var": log_var.mean().detach()}

    def export(self, directory: Path, weights: dict[str, torch.Tensor], provenance: dict[str, str]) -> Path:
        path = directory / "uncertainty.safetensors"
        tensors = {k: v.detach().contiguous().cpu() for k, v in weights.items()}
        save_file(tensors, str(path), metadata={**self.model_config.to_metadata(), **provenance})
        return path


def build_task(config: dict[str, Any], processes: Processes) -> UncertaintyTask:
    return UncertaintyTask(config)


def main(argv: Optional[Sequence[str]] = None) -> int:
    return entry.main("uncertainty", build_task, "Stage 0: train the latent uncertainty estimator.", argv)


if __name__ == "__main__":
    raise SystemExit(main())
