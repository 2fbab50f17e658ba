"""Human-readable account of a student: where its parameters are, and what a weights file holds.

`slimdiffsr info W` prints `describe(W)`; `benchmarks/params.py` prints the tables for
the paper preset and its ablations.
"""

from __future__ import annotations

import os
from typing import Union

from torch import nn

from .config import StudentConfig
from .operators import DirectionSeparableConv, FrequencySeparableConv, QueryGlobalAggregation, SelfAttention
from .unet import FeedForward
from .weights import meta_model, read_metadata

OPERATORS: tuple[tuple[str, type], ...] = (
    ("FSC (ResBlock conv1)", FrequencySeparableConv),
    ("DSC (ResBlock conv2)", DirectionSeparableConv),
    ("QGAM (attention)", QueryGlobalAggregation),
    ("self-attention (QGAM ablation)", SelfAttention),
    ("feed-forward (GEGLU)", FeedForward),
)


def _count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def parameter_table(config: StudentConfig) -> list[tuple[str, int]]:
    """(module, parameters) rows in data-flow order: VAE encoder, each UNet part, VAE decoder; then the total."""
    model = meta_model(config)
    unet = model.unet
    rows = [("encoder (TAESD-style, no 64->4 conv)", _count(model.encoder))]
    rows.append((f"unet.conv_in (fused {config.vae_channels}->{config.block_channels[0]})", _count(unet.conv_in)))
    for prefix, blocks in (("down_blocks", unet.down_blocks), ("up_blocks", unet.up_blocks)):
        for index, block in enumerate(blocks):
            for part, child in block.named_children():
                if child is not None:
                    rows.append((f"unet.{prefix}.{index}.{part}", _count(child)))
        if prefix == "down_blocks":
            rows.append((f"unet.mid_block (ResBlock {config.block_channels[-1]}->{config.mid_channels})", _count(unet.mid_block)))
    rows.append(("unet.conv_norm_out", _count(unet.conv_norm_out)))
    rows.append((f"unet.conv_out (fused {config.block_channels[0]}->{config.vae_channels})", _count(unet.conv_out)))
    rows.append(("decoder (TAESD-style, no 4->64 conv)", _count(model.decoder)))
    rows.append(("total", _count(model)))
    return rows


def operator_table(config: StudentConfig) -> list[tuple[str, int]]:
    """(operator, parameters summed over all its uses) for the replaced operators; the rest as one row."""
    model = meta_model(config)
    rows = []
    counted = 0
    for label, kind in OPERATORS:
        total = sum(_count(m) for m in model.modules() if isinstance(m, kind))
        if total:
            rows.append((label, total))
            counted += total
    rows.append(("everything else (VAE, plain convs, norms, projections)", _count(model) - counted))
    return rows


def format_table(rows: list[tuple[str, int]]) -> str:
    """Rows as aligned text, counts with thousands separators and in millions."""
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"  {name:<{width}}  {count:>12,}  {count / 1e6:8.3f} M" for name, count in rows)


def describe(path: Union[str, os.PathLike]) -> str:
    """What a weights file holds: scale, size, config, provenance and where the parameters are."""
    info = read_metadata(path)
    config = StudentConfig.from_dict(info["config"])
    settings = ", ".join(f"{key}={value}" for key, value in config.to_dict().items())
    lines = [
        f"SlimDiffSR student weights: {path}",
        f"scale: x{config.scale}",
        f"encoder layout: {config.encoder}",
        f"parameters: {info['parameters'] / 1e6:.2f} M ({info['parameters']:,})",
        f"config: {settings}",
        "provenance:",
    ]
    lines += [f"  {key}: {value}" for key, value in sorted(info["meta"].items())] or ["  (none recorded)"]
    lines += ["parameters by module:", format_table(parameter_table(config))]
    lines += ["parameters by operator:", format_table(operator_table(config))]
    return "\n".join(lines)
