"""Student UNet parameters keep the names and shapes of the SD UNet they were pruned from, and the
student starts from the teacher's (and a TAESD's) tensors under those names."""

from __future__ import annotations

import diffusers
import torch

from backend.models import StudentConfig, build, teacher_parameter_name
from benchmarks.params import paper_init_fraction
from training.networks.distillation import init_from_teacher

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


def sd_layout_teacher() -> diffusers.UNet2DConditionModel:
    torch.manual_seed(0)
    return diffusers.UNet2DConditionModel(**TINY_TEACHER)


def test_student_init_gives_the_up_blocks_and_the_mid_resblock_their_teacher_weights():
    config = StudentConfig.tiny(4).replace(ff_mult=4)
    student, teacher = build(config), sd_layout_teacher()
    fraction = init_from_teacher(student, teacher)
    # The student keeps SD's two finest levels: its up_blocks.k is SD's up_blocks.(k + 2), and its
    # mid ResBlock is the first ResBlock of SD's third down level.
    pairs = [
        (student.unet.up_blocks[0].resnets[0].norm1, teacher.up_blocks[2].resnets[0].norm1),
        (student.unet.up_blocks[1].resnets[2].conv_shortcut, teacher.up_blocks[3].resnets[2].conv_shortcut),
        (student.unet.up_blocks[0].attentions[1].proj_in, teacher.up_blocks[2].attentions[1].proj_in),
        (student.unet.up_blocks[0].upsamplers[0].conv, teacher.up_blocks[2].upsamplers[0].conv),
        (student.unet.mid_block.norm2, teacher.down_blocks[2].resnets[0].norm2),
        (student.unet.mid_block.norm1, teacher.down_blocks[2].resnets[0].norm1),
        (student.unet.down_blocks[1].attentions[0].transformer_blocks[0].ff, teacher.down_blocks[1].attentions[0].transformer_blocks[0].ff),
    ]
    for ours, theirs in pairs:
        for a, b in zip(ours.parameters(), theirs.parameters()):
            assert torch.equal(a, b)
    total = sum(p.numel() for p in student.parameters())
    without = set(unmatched(config))
    matched = sum(p.numel() for n, p in student.named_parameters() if n.startswith("unet.") and n not in without)
    assert fraction == matched / total


def test_student_init_takes_the_vae_layers_from_a_taesd_of_the_same_width():
    config = StudentConfig.tiny(4).replace(ff_mult=4)
    student = build(config)
    width = (config.vae_channels,) * 4
    taesd = diffusers.AutoencoderTiny(encoder_block_out_channels=width, decoder_block_out_channels=width)
    with_vae = init_from_teacher(student, sd_layout_teacher(), taesd)
    assert with_vae > init_from_teacher(build(config), sd_layout_teacher())
    taesd_state = taesd.state_dict()
    for name, tensor in student.state_dict().items():
        if name.startswith(("encoder.", "decoder.")):
            assert torch.equal(tensor, taesd_state[name]), name


def test_paper_student_takes_most_of_its_parameters_from_sd21():
    assert paper_init_fraction() >= 0.75
