"""Student UNet parameters keep the names and shapes of the SD UNet they were pruned from."""

from __future__ import annotations

import diffusers
import torch

from backend.models import StudentConfig, build, teacher_parameter_name

TINY_TEACHER = dict(
    sample_size=16, in_channels=4, out_channels=4, block_out_channels=(32, 64, 64, 64), layers_per_block=2,
    down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
    up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
    attention_head_dim=(2, 4, 4, 4), cross_attention_dim=16, use_linear_projection=True, norm_num_groups=8,
)
REPLACED = ("conv1.", "conv2.", "attn1.")  # FSC, DSC, QGAM: new operators with no teacher weights
FUSED = ("unet.conv_in.weight", "unet.conv_out.weight", "unet.conv_out.bias")


def unmatched(config: StudentConfig) -> list[str]:
    with torch.device("meta"):
        teacher = {k: v.shape for k, v in diffusers.UNet2DConditionModel(**TINY_TEACHER).state_dict().items()}
        student = build(config).state_dict()
    return [
        name for name, tensor in student.items()
        if name.startswith("unet.") and teacher.get(teacher_parameter_name(name, config)) != tensor.shape
    ]


def test_every_retained_unet_parameter_has_a_teacher_counterpart():
    config = StudentConfig.tiny(4).replace(ff_mult=4)
    leftovers = [n for n in unmatched(config) if n not in FUSED and not any(part in n for part in REPLACED)]
    assert leftovers == []


def test_with_all_operators_swapped_back_only_the_fused_convs_lack_a_teacher():
    config = StudentConfig.tiny(4).replace(ff_mult=4, conv1="conv3x3", conv2="conv3x3", attention="self")
    assert sorted(unmatched(config)) == sorted(FUSED)


def test_vae_parameters_are_not_unet_names():
    assert teacher_parameter_name("encoder.layers.1.conv.0.weight", StudentConfig.tiny(4)) is None
