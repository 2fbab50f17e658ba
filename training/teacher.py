"""Stage 1: the uncertainty-guided single-step teacher built on the diffusion backbone.

Pipeline per image: z_lr = VAE(bicubic(LR)); the frozen estimator gives
z_var; the predictor turns (z_gt, z_var) into a per-pixel noise level ᾱ; the
UNet treats z_lr as a noisy latent at that level and one update gives ẑ0
(Eq. 12), which the VAE decodes.

Spatial t*: diffusers' UNet takes one timestep per sample, so the UNet gets the
mean of the t* map (Eq. 11) and the per-pixel ᾱ is applied in the one-step
update. The training log records the spread of t* within each map, which is
what this simplification ignores.

Only LoRA adapters (rank 32 on the UNet, 16 on the VAE decoder) and the
predictor train; the backbone stays frozen.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from peft import LoraConfig, inject_adapter_in_model
from torch import nn

from .backbone import Backbone
from .timesteps import invert_alphas_cumprod

UNET_LORA_TARGETS = [
    "to_q", "to_k", "to_v", "to_out.0", "proj_in", "proj_out", "ff.net.0.proj", "ff.net.2",
    "conv1", "conv2", "conv_shortcut", "conv", "conv_in", "conv_out", "time_emb_proj",
]
VAE_DECODER_LORA_TARGETS = r"decoder\..*(conv1|conv2|conv_shortcut|conv|conv_in|conv_out|to_q|to_k|to_v|to_out\.0)"


@dataclass
class TeacherConfig:
    """LoRA ranks and the predictor's width."""

    unet_lora_rank: int = 32
    vae_lora_rank: int = 16
    predictor_width: int = 64


class NoiseLevelPredictor(nn.Module):
    """Pred(z_gt, z_var) -> ᾱ map [B, 1, h, w] inside the schedule's range (alphas_cumprod[-1], [0]).

    The output starts near ᾱ = 0.88 (little noise), so early training is a
    gentle restoration task rather than denoising from near-pure noise.
    """

    def __init__(self, latent_channels: int, width: int, alpha_range: tuple[float, float]) -> None:
        super().__init__()
        self.lowest, self.highest = alpha_range
        self.body = nn.Sequential(
            nn.Conv2d(2 * latent_channels, width, 3, padding=1), nn.SiLU(),
            nn.Conv2d(width, width, 3, padding=1), nn.SiLU(),
            nn.Conv2d(width, 1, 3, padding=1),
        )
        nn.init.zeros_(self.body[-1].weight)
        nn.init.constant_(self.body[-1].bias, 2.0)

    def forward(self, z_gt: torch.Tensor, z_var: torch.Tensor) -> torch.Tensor:
        level = torch.sigmoid(self.body(torch.cat([z_gt, z_var], dim=1)))
        return self.lowest + (self.highest - self.lowest) * level


def one_step_x0(z_t: torch.Tensor, model_output: torch.Tensor, alpha_bar: torch.Tensor, prediction_type: str) -> torch.Tensor:
    """ẑ0 from a noisy latent and the UNet's output, for ε- or v-prediction (Eq. 12)."""
    root_alpha = alpha_bar.sqrt()
    root_sigma = (1 - alpha_bar).sqrt()
    if prediction_type == "epsilon":
        return (z_t - root_sigma * model_output) / root_alpha
    if prediction_type == "v_prediction":
        return root_alpha * z_t - root_sigma * model_output
    raise ValueError(f"unsupported prediction_type {prediction_type!r}")


def upsample_bicubic(lr: torch.Tensor, scale: int) -> torch.Tensor:
    """LR [B, 3, h, w] in [0, 1] -> bicubic HR size, clipped to [0, 1]."""
    return F.interpolate(lr, scale_factor=scale, mode="bicubic", align_corners=False).clamp(0, 1)


class Teacher(nn.Module):
    """The single-step teacher; `forward` returns the decoded HR and what the losses and distillation need."""

    def __init__(self, backbone: Backbone, config: TeacherConfig) -> None:
        super().__init__()
        self.config = config
        self.prediction_type = backbone.prediction_type
        self.unet = backbone.unet
        self.vae = backbone.vae
        self.unet.requires_grad_(False)
        self.vae.requires_grad_(False)
        inject_adapter_in_model(
            LoraConfig(r=config.unet_lora_rank, lora_alpha=config.unet_lora_rank, target_modules=UNET_LORA_TARGETS),
            self.unet,
        )
        inject_adapter_in_model(
            LoraConfig(r=config.vae_lora_rank, lora_alpha=config.vae_lora_rank, target_modules=VAE_DECODER_LORA_TARGETS),
            self.vae,
        )
        for name, parameter in self.named_parameters():
            parameter.requires_grad_("lora_" in name)
        alphas = backbone.alphas_cumprod.float()
        self.register_buffer("alphas_cumprod", alphas, persistent=False)
        self.register_buffer("null_embedding", backbone.null_embedding.float())
        self.predictor = NoiseLevelPredictor(
            self.vae.config.latent_channels, config.predictor_width, (float(alphas[-1]), float(alphas[0]))
        )
        self.scaling_factor = float(self.vae.config.scaling_factor)

    def encode(self, image: torch.Tensor) -> torch.Tensor:
        """[B, 3, H, W] in [0, 1] -> scaled latent (the distribution's mode: deterministic)."""
        return self.vae.encode(image * 2 - 1).latent_dist.mode() * self.scaling_factor

    def decode(self, latent: torch.Tensor) -> torch.Tensor:
        """Scaled latent -> [B, 3, H, W], nominally in [0, 1] (not clipped, so L1 sees overshoot)."""
        return (self.vae.decode(latent / self.scaling_factor).sample + 1) / 2

    def denoise(self, z_lr: torch.Tensor, alpha_bar: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One step from z_lr at per-pixel noise level ᾱ: returns (ẑ0, t* map)."""
        t_map = invert_alphas_cumprod(alpha_bar, self.alphas_cumprod)
        t_mean = t_map.mean(dim=(1, 2, 3))
        context = self.null_embedding.to(z_lr.dtype).expand(z_lr.shape[0], -1, -1)
        output = self.unet(z_lr, t_mean, encoder_hidden_states=context).sample
        return one_step_x0(z_lr, output, alpha_bar, self.prediction_type), t_map

    def forward(self, lr_up: torch.Tensor, z_gt: torch.Tensor, z_var: torch.Tensor) -> dict[str, torch.Tensor]:
        """lr_up: bicubic-upsampled LR in [0, 1]; z_gt: HR latent; z_var: the estimator's variance."""
        z_lr = self.encode(lr_up)
        alpha_bar = self.predictor(z_gt, z_var)
        z0, t_map = self.denoise(z_lr, alpha_bar)
        return {"hr": self.decode(z0), "alpha_bar": alpha_bar, "t_map": t_map, "z_lr": z_lr}

    def trainable_state(self) -> dict[str, torch.Tensor]:
        """LoRA and predictor tensors plus the null embedding: what a teacher file stores."""
        state = {n: p.detach() for n, p in self.named_parameters() if p.requires_grad}
        state["null_embedding"] = self.null_embedding
        return state
