"""Parameter counts of the paper preset and its Table 6 ablations, beside the paper's numbers, and the
share of the paper student that starts from SD-2.1's UNet (and TAESD's) weights.

Run: .venv/bin/python -m benchmarks.params
Nothing is allocated: the models are built on the meta device.
"""

from __future__ import annotations

from typing import Optional

import diffusers
import torch
from torch import nn

from backend.models import StudentConfig, build
from backend.models.summary import format_table, operator_table, parameter_table
from training.networks.backbone import SD21_UNET
from training.networks.distillation import init_from_teacher

PAPER_TOTAL = 58.05e6
ABLATIONS = (
    ("DSC -> standard 3x3 conv", {"conv2": "conv3x3"}, 93.18e6),
    ("FSC -> standard 3x3 conv", {"conv1": "conv3x3"}, 99.46e6),
    ("QGAM -> standard self-attention", {"attention": "self"}, 81.11e6),
)
SD_TEXT_CONTEXT = 1024  # SD-2.1's text-embedding width, seen by the cross-attention the student drops


def total(config: StudentConfig) -> int:
    return parameter_table(config)[-1][1]


def sd_text_cross_attention(config: StudentConfig) -> int:
    """Parameters SD-2.1's text cross-attention (attn2: q, k, v, out + its LayerNorm) would add to every attention block."""
    blocks = [width for width in config.block_channels for _ in range(config.layers_per_block)]
    blocks += [width for width in config.block_channels for _ in range(config.layers_per_block + 1)]
    return sum(2 * c * c + 2 * SD_TEXT_CONTEXT * c + c + 2 * c for c in blocks)


def sd_time_embedding(config: StudentConfig) -> int:
    """Parameters of SD's timestep MLP (C0 -> 4*C0 -> 4*C0), which a single-step student never runs."""
    width = config.block_channels[0]
    return width * 4 * width + 4 * width + 4 * width * 4 * width + 4 * width


def paper_init_fraction(scale: int = 4, taesd: bool = False) -> float:
    """Fraction of the paper student's parameters that initialisation takes from an SD-2.1-shaped UNet
    (and a default TAESD), on the meta device: the same mapping training uses, without the weights."""
    with torch.device("meta"):
        teacher = diffusers.UNet2DConditionModel(**SD21_UNET)
        vae: Optional[nn.Module] = diffusers.AutoencoderTiny() if taesd else None
        student = build(StudentConfig.paper(scale))
    return init_from_teacher(student, teacher, vae)


def main() -> None:
    paper = StudentConfig.paper(4)
    print("Paper preset (x4 and x8, both encoder layouts have the same parameters):")
    print(format_table(parameter_table(paper)))
    print("\nBy operator:")
    print(format_table(operator_table(paper)))
    base = total(paper)
    for encoder in ("hr", "lr"):
        for scale in (4, 8):
            count = total(StudentConfig.paper(scale).replace(encoder=encoder))
            print(f"  paper preset x{scale} encoder={encoder}: {count / 1e6:.2f} M")
    print(f"\n{'variant':<34} {'ours':>9} {'paper':>9} {'ours-paper':>11}")
    print(f"{'SlimDiffSR student':<34} {base / 1e6:8.2f}M {PAPER_TOTAL / 1e6:8.2f}M {base / PAPER_TOTAL - 1:+10.1%}")
    with_time = base + sd_time_embedding(paper)
    print(
        f"{'  same, plus SD time-embedding MLP':<34} {with_time / 1e6:8.2f}M {PAPER_TOTAL / 1e6:8.2f}M "
        f"{with_time / PAPER_TOTAL - 1:+10.1%}  (not built: single step, no timestep)"
    )
    for label, change, reported in ABLATIONS:
        count = total(paper.replace(**change))
        print(f"{label:<34} {count / 1e6:8.2f}M {reported / 1e6:8.2f}M {count / reported - 1:+10.1%}")
    with_text = total(paper.replace(attention="self")) + sd_text_cross_attention(paper)
    print(
        f"{'  same, plus SD text cross-attention':<34} {with_text / 1e6:8.2f}M {81.11:8.2f}M "
        f"{with_text / 81.11e6 - 1:+10.1%}  (not buildable: the student has no text input)"
    )
    for label, config in (("tiny x4", StudentConfig.tiny(4)), ("tiny x8", StudentConfig.tiny(8))):
        print(f"{label}: {total(config):,}")
    print("\nInitialised from pretrained weights (paper preset x4, SD-2.1 UNet shapes):")
    print(f"  from the SD-2.1 UNet:         {paper_init_fraction():.1%} of the student's parameters")
    print(f"  from the SD-2.1 UNet + TAESD: {paper_init_fraction(taesd=True):.1%}")


if __name__ == "__main__":
    main()
