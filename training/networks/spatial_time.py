"""A per-pixel time embedding for a diffusers UNet: the teacher's spatial t* inside every ResBlock.

diffusers' UNet2DConditionModel embeds one timestep per sample, and each
ResnetBlock2D adds time_emb_proj(SiLU(emb)) to its first conv's output,
broadcast over the map. While `spatial_time(unet, t_map)` is active, a hook
on every ResBlock's first conv adds the difference between that projection
of the per-pixel embedding emb(t*(x, y)) (averaged onto the block's grid) and
the per-sample one the block adds itself. The block then sees the embedding of
t* at each pixel; the UNet is still called with a per-sample timestep (the
mean t*), which every other use of the embedding keeps.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch
import torch.nn.functional as F
from diffusers.models.resnet import ResnetBlock2D
from torch import nn

TIME_EMBEDDINGS = ("mean", "spatial")
"""How the teacher's UNet sees the t* map: its mean per sample, or per pixel inside the ResBlocks."""


def pixel_embedding(unet: nn.Module, t_map: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The UNet's time embedding of every pixel of t_map [B, 1, h, w] -> [B, E, h, w], as diffusers
    embeds one timestep (sinusoidal projection, cast to the sample's dtype, then the MLP)."""
    batch, _, height, width = t_map.shape
    flat = unet.time_proj(t_map.reshape(-1)).to(dtype)
    embedded = unet.time_embedding(flat)
    return embedded.view(batch, height, width, -1).permute(0, 3, 1, 2)


@contextlib.contextmanager
def spatial_time(unet: nn.Module, t_map: torch.Tensor, dtype: torch.dtype) -> Iterator[None]:
    """Within the block, the UNet's ResBlocks add the time embedding of t_map per pixel (see module doc)."""
    embedding = pixel_embedding(unet, t_map, dtype)
    handles = []

    for block in unet.modules():
        if not isinstance(block, ResnetBlock2D) or block.time_emb_proj is None:
            continue
        if block.time_embedding_norm != "default" or block.skip_time_act:
            raise ValueError("a per-pixel time embedding needs SD's additive ResBlock time embedding")
        per_sample: dict[str, torch.Tensor] = {}

        def keep(_block, args, kwargs, per_sample=per_sample):
            per_sample["temb"] = args[1] if len(args) > 1 else kwargs["temb"]

        def add(conv, _inputs, output, block=block, per_sample=per_sample):
            local = F.adaptive_avg_pool2d(embedding, output.shape[-2:]).to(output.dtype)
            spatial = block.time_emb_proj(block.nonlinearity(local.permute(0, 2, 3, 1))).permute(0, 3, 1, 2)
            broadcast = block.time_emb_proj(block.nonlinearity(per_sample["temb"]))[:, :, None, None]
            return output + spatial - broadcast

        handles.append(block.register_forward_pre_hook(keep, with_kwargs=True))
        handles.append(block.conv1.register_forward_hook(add))
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
