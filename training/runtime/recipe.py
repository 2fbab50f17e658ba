"""Replay a recipe: a folder of numbered student configs, each fine-tuning the product of the one before.

    python -m training.runtime.recipe training/configs/recipe_x4 [--dry-run]

Steps run in file-name order, each as `python -m training.stages.student
--config STEP`, with the budget (`max_minutes`), init and kept weights
(`student.keep`) its file states. A step whose product exists is done (it
finished, or its budget stopped it and it wrote its product) and is skipped;
a step that was interrupted continues from its newest checkpoint with its
budget counted afresh from there. Before anything trains, every step's config
is checked and each step's `student.init` must be the previous step's product.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

from slimdiffsr_qgis.contract import BadInput, SlimDiffSRError

from training.runtime.config import load_config, product_path, run_settings, typed_section
from training.runtime.entry import BUDGET_REACHED
from training.runtime.schema import check_config
from training.stages.student import StudentSettings

STAGE_MODULE = "training.stages.student"


@dataclass(frozen=True)
class Step:
    """One step of a recipe: its config, what it starts from, what it writes, its budget and kept weights."""

    config: Path
    init: Optional[Path]
    product: Path
    max_minutes: Optional[float]
    keep: str

    def command(self) -> list[str]:
        """The command that runs (or continues) this step."""
        return [sys.executable, "-m", STAGE_MODULE, "--config", str(self.config)]


def recipe_steps(folder: Path) -> list[Step]:
    """The steps of the recipe in `folder` (its *.yaml in name order), checked and chained."""
    files = sorted(Path(folder).glob("*.yaml"))
    if not files:
        raise BadInput(f"recipe folder {folder} holds no .yaml step configs")
    steps = []
    for path in files:
        config = load_config(path)
        check_config(config)
        student = typed_section(StudentSettings, config, "student")
        steps.append(Step(path, Path(student.init) if student.init else None, product_path(config, "student"),
                          run_settings(config).max_minutes, student.keep))
    for earlier, later in zip(steps, steps[1:]):
        if later.init != earlier.product:
            raise BadInput(f"{later.config} starts from {later.init}, not from the product of {earlier.config} "
                           f"({earlier.product})")
    products = [step.product for step in steps]
    if len(set(products)) != len(products):
        raise BadInput(f"two steps of {folder} write the same product: give each its own output_dir")
    return steps


def replay(folder: Path, dry_run: bool = False) -> int:
    """Run every step not yet done, in order; the exit code of the first step that fails, else 0."""
    for step in recipe_steps(folder):
        if step.product.is_file():
            print(f"{step.config.name}: done ({step.product})", file=sys.stderr)
            continue
        print(f"{step.config.name}: budget {step.max_minutes} min, keeps the {step.keep} weights: "
              f"{' '.join(step.command())}", file=sys.stderr)
        if dry_run:
            continue
        code = subprocess.call(step.command())
        if code not in (0, BUDGET_REACHED):
            return code
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path, help="a recipe folder, e.g. training/configs/recipe_x4")
    parser.add_argument("--dry-run", action="store_true", help="check the chain and print the commands only")
    args = parser.parse_args(argv)
    try:
        return replay(args.folder, args.dry_run)
    except SlimDiffSRError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code


if __name__ == "__main__":
    raise SystemExit(main())
