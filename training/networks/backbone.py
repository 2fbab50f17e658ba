"""The pretrained diffusion backbone: UNet, VAE, noise schedule and null-prompt embedding.

At paper scale these come from a local diffusers folder (SD-2.1 or SD-2.1-base:
`unet/`, `vae/`, `scheduler/`, and `text_encoder/` + `tokenizer/` for the null
prompt); nothing is downloaded. `source: tiny` builds a small randomly
initialised backbone in code from a fixed seed, so tests and the tiny CPU
chain get the same backbone in every stage without any file.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, AutoencoderTiny, DDPMScheduler, UNet2DConditionModel

from slimdiffsr_qgis.contract import BadInput

TINY_SEED = 1234
SD21_UNET = dict(
    sample_size=96, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=(320, 640, 1280, 1280),
    down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
    up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
    attention_head_dim=(5, 10, 20, 20), cross_attention_dim=1024, use_linear_projection=True, upcast_attention=True,
)
"""SD-2.1's UNet config (its unet/config.json minus defaults): lets code that needs only shapes (the
parameter-count benchmark) build the teacher on the meta device without the pretrained folder."""
TINY_CROSS_ATTENTION_DIM = 32
TINY_PROMPT_TOKENS = 4


@dataclass(frozen=True)
class BackboneSettings:
    """A config's `backbone` section: `source` is a local diffusers folder or "tiny"; `prediction_type`
    applies to "tiny" only (a folder's scheduler decides its own)."""

    source: str = "tiny"
    prediction_type: str = "epsilon"


@dataclass
class Backbone:
    """Frozen pretrained parts, plus what the teacher needs to know about the schedule."""

    unet: UNet2DConditionModel
    vae: AutoencoderKL
    alphas_cumprod: torch.Tensor
    prediction_type: str
    null_embedding: torch.Tensor
    source: str
    notes: list[str]

    @property
    def source_spec(self) -> str:
        """The "SOURCE|PREDICTION_TYPE" string a teacher file stores to rebuild this backbone."""
        return f"{self.source}|{self.prediction_type}"


def load_backbone(source: str, prediction_type: str = "epsilon") -> Backbone:
    """`source` is a local diffusers folder or "tiny"; prediction_type applies to "tiny" only.

    A folder's scheduler config decides its prediction type (SD-2.1 predicts v,
    SD-2.1-base predicts ε).
    """
    if source == "tiny":
        return _tiny_backbone(prediction_type)
    return _folder_backbone(Path(source))


def load_taesd(folder: str) -> AutoencoderTiny:
    """TAESD (diffusers AutoencoderTiny) from a local folder: the student's VAE layers carry its names."""
    path = Path(folder)
    if not (path / "config.json").is_file():
        raise BadInput(f"{path} is not a diffusers AutoencoderTiny (TAESD) folder: it has no config.json")
    return AutoencoderTiny.from_pretrained(path, use_safetensors=True, local_files_only=True)


def encode_latent(vae: AutoencoderKL, image: torch.Tensor) -> torch.Tensor:
    """[B, 3, H, W] in [0, 1] -> scaled latent [B, 4, H/8, W/8]; the distribution's mode, so deterministic."""
    return vae.encode(image * 2 - 1).latent_dist.mode() * vae.config.scaling_factor


def decode_latent(vae: AutoencoderKL, latent: torch.Tensor) -> torch.Tensor:
    """Scaled latent -> [B, 3, H, W], nominally in [0, 1] (not clipped, so L1 sees overshoot)."""
    return (vae.decode(latent / vae.config.scaling_factor).sample + 1) / 2


def upsample_bicubic(lr: torch.Tensor, scale: int) -> torch.Tensor:
    """LR [B, 3, h, w] in [0, 1] -> bicubic HR size, clipped to [0, 1]: the input the latents are made from."""
    return F.interpolate(lr, scale_factor=scale, mode="bicubic", align_corners=False).clamp(0, 1)


def scheduler_from(prediction_type: str) -> DDPMScheduler:
    """The SD-2.x noise schedule (scaled linear, 1000 steps) with the given prediction type."""
    if prediction_type not in ("epsilon", "v_prediction"):
        raise BadInput(f"prediction_type {prediction_type!r} is not supported; use 'epsilon' or 'v_prediction'")
    return DDPMScheduler(
        num_train_timesteps=1000, beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
        prediction_type=prediction_type,
    )


def _tiny_backbone(prediction_type: str) -> Backbone:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(TINY_SEED)
        unet = UNet2DConditionModel(
            sample_size=8, in_channels=4, out_channels=4, block_out_channels=(32, 64),
            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
            layers_per_block=1, cross_attention_dim=TINY_CROSS_ATTENTION_DIM, attention_head_dim=8,
            norm_num_groups=8,
        )
        vae = AutoencoderKL(
            in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 16, 16, 16),
            down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
            layers_per_block=1, norm_num_groups=8, sample_size=64,
        )
    scheduler = scheduler_from(prediction_type)
    return Backbone(
        unet=unet, vae=vae, alphas_cumprod=scheduler.alphas_cumprod.float(), prediction_type=prediction_type,
        null_embedding=torch.zeros(1, TINY_PROMPT_TOKENS, TINY_CROSS_ATTENTION_DIM), source="tiny",
        notes=["backbone: tiny random UNet/VAE built in code (tests and CPU chain only; not a pretrained model)"],
    )


def _folder_backbone(folder: Path) -> Backbone:
    for part in ("unet", "vae", "scheduler"):
        if not (folder / part).is_dir():
            raise BadInput(
                f"{folder} is not a diffusers model folder: it has no '{part}/' subfolder "
                "(give the local SD-2.1 folder, e.g. one saved with save_pretrained)"
            )
    unet = UNet2DConditionModel.from_pretrained(folder, subfolder="unet", use_safetensors=True, local_files_only=True)
    vae = AutoencoderKL.from_pretrained(folder, subfolder="vae", use_safetensors=True, local_files_only=True)
    scheduler = DDPMScheduler.from_pretrained(folder, subfolder="scheduler", local_files_only=True)
    notes = [f"backbone: {folder} (prediction_type={scheduler.config.prediction_type})"]
    null_embedding, how = _null_prompt_embedding(folder, unet.config.cross_attention_dim)
    notes.append(how)
    return Backbone(
        unet=unet, vae=vae, alphas_cumprod=scheduler.alphas_cumprod.float(),
        prediction_type=scheduler.config.prediction_type, null_embedding=null_embedding, source=str(folder), notes=notes,
    )


def _null_prompt_embedding(folder: Path, width: int) -> tuple[torch.Tensor, str]:
    """CLIP embedding of the empty prompt, computed once; zeros when the folder has no text encoder."""
    if not ((folder / "text_encoder").is_dir() and (folder / "tokenizer").is_dir()):
        return torch.zeros(1, 77, width), "null prompt: zeros (the folder has no text_encoder/tokenizer)"
    from transformers import CLIPTextModel, CLIPTokenizer

    tokenizer = CLIPTokenizer.from_pretrained(folder, subfolder="tokenizer", local_files_only=True)
    encoder = CLIPTextModel.from_pretrained(folder, subfolder="text_encoder", use_safetensors=True, local_files_only=True)
    tokens = tokenizer([""], padding="max_length", max_length=tokenizer.model_max_length, return_tensors="pt")
    with torch.no_grad():
        embedding = encoder(tokens.input_ids)[0]
    return embedding, "null prompt: CLIP embedding of '' from the folder's text encoder"
