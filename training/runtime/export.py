"""Write a weights file from any checkpoint of a student run: its EMA or its raw weights.

A run exports the EMA of its last step. Which of the two is better, and at which
step, is a question for the validation blocks (`benchmarks.quality --role
validation`); this tool makes any candidate a normal, self-describing weights
file. The run's own product (`student.safetensors` in the stage folder) supplies
the config and provenance, and is used whenever it exists. While the first piece
of a run is still going it has no product yet, and `--like` names a weights file
of the same architecture (e.g. the run's `student.init`) to supply the config;
its training log is not the run's, so the export then points to the run's own
log instead of inheriting a lineage that is not its. The metadata records which
tensors were taken.

    python -m training.runtime.export runs/default_x4/student --step 2600 --take generator --out F.safetensors
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional, Sequence

import torch
from safetensors.torch import load_file

from slimdiffsr_qgis.contract import BadInput
from backend.models import load, save

TAKES = ("ema", "generator")
PREFIX = "student."


def export(stage_dir: Path, step: int, take: str, out: Path, like: Optional[Path] = None) -> Path:
    """Write checkpoint `step`'s `take` tensors ("ema" or "generator") with the config and meta of the run's
    product, or, for a run that has none yet, the config of `like` (a weights file of the same architecture)."""
    if take not in TAKES:
        raise BadInput(f"take must be one of {', '.join(TAKES)}, not {take!r}")
    own_product = stage_dir / "student.safetensors"
    product = own_product if own_product.is_file() or like is None else like
    tensors_file = stage_dir / "checkpoints" / f"step_{step}" / f"{take}.safetensors"
    for needed in (product, tensors_file):
        if not needed.is_file():
            hint = "" if like or needed == tensors_file else " (a run still going has none yet: pass --like)"
            raise BadInput(f"{needed} does not exist{hint}: give a student stage folder and one of its checkpoint steps")
    model = load(product)
    tensors = {k[len(PREFIX):]: v for k, v in load_file(str(tensors_file)).items() if k.startswith(PREFIX)}
    try:
        model.load_state_dict(tensors)
    except RuntimeError as error:
        raise BadInput(f"checkpoint step_{step} does not fit the architecture of {product}: {error}") from None
    state = torch.load(tensors_file.parent / "state.pt", map_location="cpu", weights_only=True)
    meta = {**model.meta, "steps": str(step), "minutes": f"{state['minutes']:.2f}",
            "weights_taken": f"{take} of checkpoint step_{step} of {stage_dir}"}
    if product != own_product:
        meta["training_log"] = f"exported while the run was still going: see {stage_dir / 'run.log'} (config of {like})"
    save(model, out, meta)
    return out


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("stage_dir", type=Path, help="a student stage folder, e.g. runs/default_x4/student")
    parser.add_argument("--step", type=int, required=True, help="checkpoint step (checkpoints/step_N)")
    parser.add_argument("--take", choices=TAKES, default="ema", help="the EMA (default) or the raw trained weights")
    parser.add_argument("--out", type=Path, required=True, help="weights file to write")
    parser.add_argument("--like", type=Path, default=None,
                        help="weights file of the same architecture supplying the config while the run has no product yet")
    args = parser.parse_args(argv)
    try:
        print(export(args.stage_dir, args.step, args.take, args.out, args.like))
    except BadInput as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
