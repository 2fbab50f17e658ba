"""Stage-2 distillation pieces: teacher feature taps, 1x1-conv adapters, the feature loss, and
initialising the student from the teacher's weights (and a TAESD's, when given) where the
student's parameter maps to a teacher tensor of the same shape.

The student's taps (`backend.models.feature_channels`) are "down{i}", "mid" and
"up{i}"; they pair with the teacher UNet's down_blocks[i], mid_block and the
up block at the same level (up_blocks[-1 - i]). When the paired maps differ in
size (at paper scale the student drops SD's deepest levels, so its "down1" and
"mid" sit at a finer grid than SD's), the adapted student map is pooled or
interpolated to the teacher's grid.
"""

from __future__ import annotations

import contextlib
import re
from typing import Iterator, Optional, Sequence

import torch
import torch.nn.functional as F
from peft.tuners.lora import LoraLayer
from torch import nn

from backend.models import SlimDiffSR, teacher_parameter_name
from slimdiffsr_qgis.contract import BadInput

from training.losses.statistics import PAPER_BANDWIDTHS, mmd2_rbf


def teacher_modules(unet: nn.Module, taps: list[str]) -> dict[str, nn.Module]:
    """The diffusers UNet block whose output pairs with each student tap."""
    found: dict[str, nn.Module] = {}
    for tap in taps:
        if tap == "mid":
            found[tap] = unet.mid_block
            continue
        match = re.fullmatch(r"(down|up)(\d+)", tap)
        if match is None:
            raise BadInput(f"unknown distillation tap {tap!r}; use down<i>, mid or up<i>")
        path, level = match.group(1), int(match.group(2))
        blocks = unet.down_blocks if path == "down" else unet.up_blocks
        if level >= len(blocks):
            raise BadInput(f"distillation tap {tap!r}: the teacher UNet has only {len(blocks)} levels")
        found[tap] = blocks[level] if path == "down" else blocks[len(blocks) - 1 - level]
    return found


@contextlib.contextmanager
def capture(modules: dict[str, nn.Module]) -> Iterator[dict[str, torch.Tensor]]:
    """Collect each module's output (the hidden state, for blocks that return a tuple) while inside."""
    outputs: dict[str, torch.Tensor] = {}

    def hook(name: str):
        def keep(_module, _inputs, output):
            outputs[name] = output[0] if isinstance(output, tuple) else output
        return keep

    handles = [module.register_forward_hook(hook(name)) for name, module in modules.items()]
    try:
        yield outputs
    finally:
        for handle in handles:
            handle.remove()


class FeatureAdapters(nn.Module):
    """φ: one 1x1 conv per tap from the student's channels to the teacher's."""

    def __init__(self, student_channels: dict[str, int], teacher_channels: dict[str, int]) -> None:
        super().__init__()
        self.maps = nn.ModuleDict(
            {tap: nn.Conv2d(student_channels[tap], teacher_channels[tap], 1) for tap in teacher_channels}
        )

    def forward(self, tap: str, features: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        adapted = self.maps[tap](features)
        if adapted.shape[-2:] == size:
            return adapted
        if adapted.shape[-2] >= size[0]:
            return F.adaptive_avg_pool2d(adapted, size)
        return F.interpolate(adapted, size=size, mode="bilinear", align_corners=False)


def distillation_terms(student: dict[str, torch.Tensor], teacher: dict[str, torch.Tensor], adapters: FeatureAdapters,
                       tokens: int, bandwidths: Sequence[float] = PAPER_BANDWIDTHS) -> tuple[torch.Tensor, torch.Tensor]:
    """Σ over taps of MSE(φ(f_stu), f_tea) and of MMD²_RBF between their feature vectors (Eq. 16-17).

    MMD uses at most `tokens` positions per tap, the same positions in both maps,
    and an RBF kernel at the median-heuristic bandwidth times each of `bandwidths`.
    """
    mse = next(iter(teacher.values())).new_zeros(())
    mmd = mse.clone()
    for tap, target in teacher.items():
        target = target.float()
        adapted = adapters(tap, student[tap], tuple(target.shape[-2:])).float()
        mse = mse + F.mse_loss(adapted, target)
        a = adapted.permute(0, 2, 3, 1).reshape(-1, adapted.shape[1])
        b = target.permute(0, 2, 3, 1).reshape(-1, target.shape[1])
        if a.shape[0] > tokens:
            keep = torch.randperm(a.shape[0], device=a.device)[:tokens]
            a, b = a[keep], b[keep]
        mmd = mmd + mmd2_rbf(a, b, bandwidths=bandwidths)
    return mse, mmd


def merge_lora(module: nn.Module) -> None:
    """Fold LoRA deltas into the base weights: a frozen teacher runs faster and its weights read plainly."""
    for layer in module.modules():
        if isinstance(layer, LoraLayer):
            layer.merge()


def init_from_teacher(student: SlimDiffSR, teacher_unet: nn.Module, taesd: Optional[nn.Module] = None) -> float:
    """Copy every student tensor the teacher has under its mapped name with the same shape.

    UNet names go through `teacher_parameter_name` (the student's up blocks and
    its mid ResBlock sit at other indices in SD's UNet than in the student);
    the VAE's `encoder.layers.*` / `decoder.layers.*` are diffusers'
    AutoencoderTiny (TAESD) names as they are, copied when `taesd` is given.
    LoRA deltas are merged into the teacher first. Returns the fraction of
    student parameters (by count) so initialised: FSC, DSC, QGAM and the fused
    convs have no counterpart, so it is reported, not tuned.
    """
    merge_lora(teacher_unet)
    unet = {k.replace(".base_layer", ""): v for k, v in teacher_unet.state_dict().items() if "lora_" not in k}
    vae = taesd.state_dict() if taesd is not None else {}
    levels = len(teacher_unet.down_blocks)
    copied = total = 0
    with torch.no_grad():
        for name, parameter in student.named_parameters():
            total += parameter.numel()
            key = teacher_parameter_name(name, student.config, levels)
            source = unet.get(key) if key is not None else vae.get(name)
            if source is not None and source.shape == parameter.shape:
                parameter.copy_(source)
                copied += parameter.numel()
    return copied / total
