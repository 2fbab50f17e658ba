"""What every training entry point does around its stage: arguments, config, processes, data, loop.

    python -m training.stages.uncertainty --config training/configs/tiny_cpu.yaml [--out DIR]
        [--max-minutes M] [--device auto|cpu|cuda] [--set section.key=value ...] [--allow-fallbacks]

Under `torchrun --nproc_per_node N` or `accelerate launch` the same command
trains data-parallel; rerunning a command continues from its newest checkpoint.
The whole config is checked before anything trains, so a misspelt key in a
later stage's section fails now, not hours later.
"""

from __future__ import annotations

import argparse
import platform
import sys
from typing import Any, Callable, Optional, Sequence

import torch
from torch.utils.data import Dataset

from slimdiffsr_qgis.contract import SlimDiffSRError

from training.runtime import data_parallel
from training.data.batches import seeded_batches
from training.runtime.config import load_config, loop_config, run_settings, save_run_config, stage_dir
from training.runtime.data_parallel import Processes
from training.data.datasets import training_dataset
from training.runtime.loop import Outcome, Task, seed_everything, train

TaskFactory = Callable[[dict[str, Any], Processes], Task]
BUDGET_REACHED = 3
"""Exit code of a stage stopped by its wall-clock budget (with a checkpoint and its product written)."""


def parser(description: str) -> argparse.ArgumentParser:
    """The options every stage accepts."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--config", required=True, help="YAML config, e.g. training/configs/tiny_cpu.yaml")
    p.add_argument("--out", help="output folder (overrides the config's output_dir)")
    p.add_argument("--max-minutes", type=float,
                   help="stop (with a checkpoint) after this much wall-clock time (overrides the config's max_minutes)")
    p.add_argument("--device", default=None, choices=["auto", "cpu", "cuda"], help="overrides the config's device")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config value")
    p.add_argument("--allow-fallbacks", action="store_true",
                   help="train with the documented fallbacks where LPIPS or DINO weights are not given "
                        "(recorded in the run's config.yaml)")
    return p


def main(stage: str, build_task: TaskFactory, description: str, argv: Optional[Sequence[str]] = None) -> int:
    """Entry point body: returns the process exit code; user errors print one line."""
    args = parser(description).parse_args(argv)
    try:
        config = load_config(args.config, args.set, args.out)
        if args.device:
            config["device"] = args.device
        if args.allow_fallbacks:
            config["allow_fallbacks"] = True
        max_minutes = run_settings(config).max_minutes if args.max_minutes is None else args.max_minutes
        outcome = run_stage(stage, build_task, config, max_minutes=max_minutes)
    except SlimDiffSRError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    return 0 if outcome.finished else BUDGET_REACHED


def run_stage(stage: str, build_task: TaskFactory, config: dict[str, Any], dataset: Optional[Dataset] = None,
              max_minutes: Optional[float] = None) -> Outcome:
    """Train one stage as `config` says; `dataset` replaces the configured training data (tests)."""
    from training.runtime.schema import check_config  # the schema imports the stages, which import this module

    check_config(config)
    apply_cpu_threads(config)
    processes = data_parallel.start(run_settings(config).device)
    try:
        loop = loop_config(config, stage)
        seed_everything(loop.seed)  # networks start from the same weights in every run of this config
        task = build_task(config, processes)
        if processes.is_main:
            save_run_config(config, stage, task.pretrained)
        if dataset is None:
            dataset = training_dataset(config)
        batches = seeded_batches(dataset, loop.batch_size, loop.grad_accum, loop.seed, loop.num_workers)
        provenance = {
            "stage": stage,
            "hardware": f"{processes.world_size} x {_device_name(processes.device)}",
            "host": platform.node(),
            "torch": torch.__version__,
        }
        return train(task, loop, batches, stage_dir(config, stage), processes, max_minutes, provenance)
    finally:
        data_parallel.stop(processes)


def apply_cpu_threads(config: dict[str, Any]) -> None:
    """Use the config's `cpu_threads` for torch's CPU ops, when it sets one (default: torch's own choice)."""
    threads = run_settings(config).cpu_threads
    if threads is not None:
        torch.set_num_threads(threads)


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({platform.processor() or platform.machine()})"
