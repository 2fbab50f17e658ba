"""Stage 1: the uncertainty-guided single-step teacher built on the diffusion backbone.

Pipeline per image: z_lr = VAE(bicubic(LR)); the frozen estimator gives
z_var; the predictor turns (z_gt, z_var) into a per-pixel noise level ᾱ; the
UNet treats z_lr as a noisy latent at that level and one update gives ẑ0
(Eq. 12), which the VAE decodes.

Spatial t*: diffusers' UNet takes one timestep per sample, so by default
(`time_embedding: mean`) the UNet gets the mean of the t* map (Eq. 11) and the
per-pixel ᾱ is applied in the one-step update; the training log records the
spread of t* within each map, which this simplification ignores. With
`time_embedding: spatial` every ResBlock also adds the embedding of t* per
pixel (training/networks/spatial_time.py).

Only LoRA adapters (rank 32 on the UNet, 16 on the VAE decoder) and the
predictor train; the backbone stays frozen.
"""

from __future__ import annotations

import contextlib
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
from peft import LoraConfig, inject_adapter_in_model
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from slimdiffsr_qgis.contract import BadInput

from training.networks.backbone import Backbone, decode_latent, encode_latent, load_backbone
from training.networks.spatial_time import TIME_EMBEDDINGS, spatial_time
from training.networks.timesteps import invert_alphas_cumprod
from training.networks.uncertainty_estimator import UncertaintyConfig, UncertaintyEstimator

UNET_LORA_TARGETS = [
    "to_q", "to_k", "to_v", "to_out.0", "proj_in", "proj_out", "ff.net.0.proj", "ff.net.2",
    "conv1", "conv2", "conv_shortcut", "conv", "conv_in", "conv_out", "time_emb_proj",
]
UNCERTAINTY_PREFIX = "uncertainty."
VAE_DECODER_LORA_TARGETS = r"decoder\..*(conv1|conv2|conv_shortcut|conv|conv_in|conv_out|to_q|to_k|to_v|to_out\.0)"


@dataclass
class TeacherConfig:
    """LoRA ranks, the predictor's width, and how the UNet sees the t* map ("mean" or "spatial")."""

    unet_lora_rank: int = 32
    vae_lora_rank: int = 16
    predictor_width: int = 64
    time_embedding: str = "mean"

    def __post_init__(self) -> None:
        if self.time_embedding not in TIME_EMBEDDINGS:
            raise BadInput(f"teacher time_embedding must be one of {', '.join(TIME_EMBEDDINGS)}, not {self.time_embedding!r}")

    @classmethod
    def from_metadata(cls, meta: dict[str, str]) -> "TeacherConfig":
        """Inverse of the str() values a teacher file stores; a file without a field gets its default."""
        kinds = {item.name: item.type for item in fields(cls)}
        return cls(**{k: (int(meta[k]) if kinds[k] == "int" else meta[k]) for k in kinds if k in meta})


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

    def encode(self, image: torch.Tensor) -> torch.Tensor:
        """[B, 3, H, W] in [0, 1] -> scaled latent; the encoder has no LoRA, so no gradient is needed."""
        with torch.no_grad():
            return encode_latent(self.vae, image)

    def denoise(self, z_lr: torch.Tensor, alpha_bar: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One step from z_lr at per-pixel noise level ᾱ: returns (ẑ0, t* map)."""
        t_map = invert_alphas_cumprod(alpha_bar, self.alphas_cumprod)
        t_mean = t_map.mean(dim=(1, 2, 3))
        context = self.null_embedding.to(z_lr.dtype).expand(z_lr.shape[0], -1, -1)
        per_pixel = spatial_time(self.unet, t_map, z_lr.dtype) if self.config.time_embedding == "spatial" else contextlib.nullcontext()
        with per_pixel:
            output = self.unet(z_lr, t_mean, encoder_hidden_states=context).sample
        return one_step_x0(z_lr, output, alpha_bar, self.prediction_type), t_map

    def forward(self, z_lr: torch.Tensor, z_gt: torch.Tensor, z_var: torch.Tensor) -> dict[str, torch.Tensor]:
        """z_lr: latent of the bicubic-upsampled LR; z_gt: HR latent; z_var: the estimator's variance."""
        alpha_bar = self.predictor(z_gt, z_var)
        z0, t_map = self.denoise(z_lr, alpha_bar)
        return {"hr": decode_latent(self.vae, z0), "alpha_bar": alpha_bar, "t_map": t_map}

    def trainable_state(self) -> dict[str, torch.Tensor]:
        """LoRA and predictor tensors plus the null embedding: what a teacher file stores."""
        state = {n: p.detach() for n, p in self.named_parameters() if p.requires_grad}
        state["null_embedding"] = self.null_embedding
        return state


def save_teacher(path: Path, weights: dict[str, torch.Tensor], estimator: UncertaintyEstimator,
                 config: TeacherConfig, backbone: Backbone, provenance: dict[str, str]) -> None:
    """One file with the trained teacher tensors and the frozen estimator (prefix "uncertainty."),
    plus what is needed to rebuild it: the backbone's source, prediction type, ranks and estimator config."""
    tensors = {k: v.detach().contiguous().cpu() for k, v in weights.items()}
    tensors.update({f"{UNCERTAINTY_PREFIX}{k}": v.contiguous().cpu() for k, v in estimator.state_dict().items()})
    meta = {
        "backbone": backbone.source_spec,
        "prediction_type": backbone.prediction_type,
        **{k: str(v) for k, v in asdict(config).items()},
        **{f"{UNCERTAINTY_PREFIX}{k}": v for k, v in estimator.config.to_metadata().items()},
        **provenance,
    }
    save_file(tensors, str(path), metadata=meta)


def load_teacher(path: Path) -> tuple[Teacher, UncertaintyEstimator, dict[str, str]]:
    """Rebuild a frozen teacher and its estimator from a stage-1 file; the backbone is loaded from its source."""
    if not Path(path).is_file():
        raise BadInput(f"teacher weights {path} do not exist; run python -m training.stages.teacher first")
    with safe_open(str(path), framework="pt") as handle:
        meta = handle.metadata() or {}
    if "backbone" not in meta:
        raise BadInput(f"{path} is not a teacher file written by training.stages.teacher (no backbone in its metadata)")
    source, _, prediction_type = meta["backbone"].partition("|")
    backbone = load_backbone(source, prediction_type or "epsilon")
    config = TeacherConfig.from_metadata(meta)
    teacher = Teacher(backbone, config)
    state = load_file(str(path))
    estimator_meta = {k[len(UNCERTAINTY_PREFIX):]: v for k, v in meta.items() if k.startswith(UNCERTAINTY_PREFIX)}
    estimator = UncertaintyEstimator(UncertaintyConfig.from_metadata(estimator_meta))
    estimator.load_state_dict({k[len(UNCERTAINTY_PREFIX):]: v for k, v in state.items() if k.startswith(UNCERTAINTY_PREFIX)})
    own = {k: v for k, v in state.items() if not k.startswith(UNCERTAINTY_PREFIX)}
    missing = set(teacher.trainable_state()) - set(own)
    if missing:
        raise BadInput(f"{path} lacks {len(missing)} teacher tensors (e.g. {sorted(missing)[:2]}); it was made with another configuration")
    teacher.load_state_dict(own, strict=False)
    teacher.requires_grad_(False).eval()
    estimator.requires_grad_(False).eval()
    return teacher, estimator, meta
