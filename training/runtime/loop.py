"""The training loop every stage shares: optimisers, accumulation, mixed precision, EMA,
data parallelism, checkpoints with exact resume, a wall-clock budget, progress and logs.

A stage is a `Task`: it owns the networks and computes its losses; the loop
owns everything about running them. Exact resume rests on two things: a
checkpoint holds every tensor that changes during training (trainable
weights, buffers, optimiser, EMA and grad-scaler state), and all randomness is
drawn from generators reseeded from (seed, rank, step) at every step, so step
k draws the same numbers whether or not the run was interrupted before it.
"""

from __future__ import annotations

import contextlib
import math
import random
import shutil
import time
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Callable, Iterator, Optional

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn
from tqdm import tqdm

from slimdiffsr_qgis.contract import BadInput

from training.runtime import data_parallel
from training.runtime.data_parallel import Processes
from training.runtime.ema import EMA
from training.runtime.records import LossTable, RunLog

LR_DECAYS = ("constant", "cosine")
PRECISIONS = {"no": None, "bf16": torch.bfloat16, "fp16": torch.float16}
DEFAULT_WEIGHT_DECAY = {"adamw": 1e-2, "adam": 0.0}
"""PyTorch's own defaults: AdamW with no weight decay would be Adam."""


@dataclass
class LoopConfig:
    """How long and how to optimise; one per stage in the YAML config."""

    steps: int
    batch_size: int
    lr: float
    optimizer: str = "adamw"
    lr_decay: str = "constant"
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: Optional[float] = None
    """Decoupled for AdamW, L2 for Adam; None: PyTorch's default (AdamW 1e-2, Adam 0)."""
    critic_lr: float = 1e-4
    grad_accum: int = 1
    grad_clip: float = 1.0
    ema_decay: float = 0.0
    mixed_precision: str = "no"
    checkpoint_every: int = 1000
    keep_checkpoints: int = 2
    log_every: int = 10
    seed: int = 0
    num_workers: int = 0
    stop_at: Optional[int] = None
    """Finish after this step of a schedule planned over `steps`: replays, on any machine, a run that a
    wall-clock budget once cut short (its learning rate then never reached the end of its cosine)."""

    def __post_init__(self) -> None:
        # YAML reads "5e-5" (no dot) as a string; numbers are coerced here so configs may write either.
        for item in fields(self):
            if item.type in ("int", "float"):
                try:
                    setattr(self, item.name, (int if item.type == "int" else float)(getattr(self, item.name)))
                except (TypeError, ValueError):
                    raise BadInput(f"loop setting {item.name} must be a number, not {getattr(self, item.name)!r}") from None
        self.betas = tuple(float(b) for b in self.betas)
        if self.mixed_precision not in PRECISIONS:
            raise BadInput(f"mixed_precision must be one of {', '.join(PRECISIONS)}, not {self.mixed_precision!r}")
        if self.lr_decay not in LR_DECAYS:
            raise BadInput(f"lr_decay must be one of {', '.join(LR_DECAYS)}, not {self.lr_decay!r}")
        if self.optimizer not in ("adam", "adamw"):
            raise BadInput(f"optimizer must be 'adam' or 'adamw', not {self.optimizer!r}")
        try:
            self.weight_decay = float(DEFAULT_WEIGHT_DECAY[self.optimizer] if self.weight_decay is None else self.weight_decay)
        except (TypeError, ValueError):
            raise BadInput(f"loop setting weight_decay must be a number, not {self.weight_decay!r}") from None
        if self.steps < 1 or self.batch_size < 1 or self.grad_accum < 1:
            raise BadInput("steps, batch_size and grad_accum must be at least 1")
        if self.stop_at is not None and not (isinstance(self.stop_at, int) and 1 <= self.stop_at <= self.steps):
            raise BadInput(f"stop_at must be a step from 1 to steps ({self.steps}), not {self.stop_at!r}")

    @property
    def last_step(self) -> int:
        """The step a run finishes at: `stop_at` when set, else the end of its schedule."""
        return self.steps if self.stop_at is None else self.stop_at


class Task:
    """One training stage. Subclasses set `generator` (and optionally `critic`) and implement the losses.

    generator: the module whose trainable parameters the stage optimises (its
        frozen parts are not checkpointed); `export` writes its final weights.
    critic: an optional discriminator trained in alternation with its own optimiser.
    notes: lines for the run log (backbones found, fallbacks used, ...).
    pretrained: what stands in each pretrained role the stage uses (e.g.
        "perceptual": "LPIPS-VGG16 from F" or "fallback ..."), saved with the run's config.
    """

    name = "task"
    generator: nn.Module
    critic: Optional[nn.Module] = None

    def __init__(self) -> None:
        self.notes: list[str] = []
        self.pretrained: dict[str, str] = {}

    def to(self, device: torch.device) -> None:
        """Move every network the stage uses (including frozen helpers) to `device`."""
        self.generator.to(device)
        if self.critic is not None:
            self.critic.to(device)

    def generator_losses(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Loss terms for one micro-batch; "total" is what is minimised."""
        raise NotImplementedError

    def critic_losses(self) -> dict[str, torch.Tensor]:
        """The discriminator's loss on the real and generated images of the last micro-batch."""
        raise NotImplementedError

    def export(self, directory: Path, weights: dict[str, torch.Tensor], provenance: dict[str, str]) -> Path:
        """Write the stage's product (using `weights`, the EMA or live trainable tensors); return its path."""
        raise NotImplementedError


@dataclass
class Outcome:
    """How a call to `train` ended."""

    step: int
    finished: bool
    product: Optional[Path] = None
    notes: list[str] = field(default_factory=list)


def trainable_state(module: nn.Module) -> dict[str, torch.Tensor]:
    """Trainable parameters plus persistent buffers: everything training changes, nothing frozen."""
    parameters = dict(module.named_parameters())
    return {k: v for k, v in module.state_dict().items() if k not in parameters or parameters[k].requires_grad}


def step_seed(seed: int, rank: int, step: int, micro: int = 0) -> int:
    """A distinct, reproducible seed per (run seed, rank, step, micro-batch)."""
    return (seed * 1_000_003 + rank * 7_919 + step * 131 + micro) % (2**63 - 1)


def seed_everything(value: int) -> None:
    random.seed(value)
    np.random.seed(value % (2**32))
    torch.manual_seed(value)


def train(
    task: Task,
    config: LoopConfig,
    batches: Callable[[int, int], Iterator[dict[str, torch.Tensor]]],
    directory: Path,
    processes: Processes,
    max_minutes: Optional[float] = None,
    provenance: Optional[dict[str, str]] = None,
) -> Outcome:
    """Run (or continue) `task` until config.steps or the wall-clock budget, checkpointing in `directory`.

    batches(start_step, rank) yields one micro-batch dict after another, from
    the micro-batches of `start_step` on. A run continues from the newest
    checkpoint in `directory` when there is one; with max_minutes set, it
    stops after the step that exceeds the budget, checkpoints, and the same
    command continues it later.
    """
    started = time.monotonic()
    directory.mkdir(parents=True, exist_ok=True)
    log = RunLog(directory / "run.log", enabled=processes.is_main)
    table = LossTable(directory / "losses.csv", enabled=processes.is_main)
    device = processes.device
    task.to(device)
    data_parallel.broadcast_module(task.generator, processes)
    if task.critic is not None:
        data_parallel.broadcast_module(task.critic, processes)

    params = [p for p in task.generator.parameters() if p.requires_grad]
    optimisers = [_optimiser(params, config, config.lr)]
    critic_params: list[nn.Parameter] = []
    if task.critic is not None:
        critic_params = [p for p in task.critic.parameters() if p.requires_grad]
        optimisers.append(_optimiser(critic_params, config, config.critic_lr))
    precision = PRECISIONS[config.mixed_precision]
    scaler = torch.amp.GradScaler(device.type, enabled=precision is torch.float16)
    ema = EMA(task.generator, config.ema_decay) if config.ema_decay > 0 else None

    step, earlier_minutes = _resume(directory, task, optimisers, scaler, ema, log)

    def minutes() -> float:
        """Training minutes over every call that led to this step."""
        return earlier_minutes + (time.monotonic() - started) / 60

    table.drop_after(step)
    if step == 0:
        for line in task.notes:
            log.write(line)
        log.write(
            f"{task.name}: {config.steps} steps, batch {config.batch_size} x {config.grad_accum} accumulation "
            f"x {processes.world_size} processes on {device}, mixed precision {config.mixed_precision}, "
            f"EMA {config.ema_decay or 'off'}"
            + ("" if config.stop_at is None else f", stopping at step {config.stop_at} of its schedule")
        )
    progress = tqdm(total=config.last_step, initial=step, disable=not processes.is_main, desc=task.name, dynamic_ncols=True)
    stream = batches(step, processes.rank)
    finished = step >= config.last_step
    while not finished:
        seed_everything(step_seed(config.seed, processes.rank, step))
        totals: dict[str, float] = {}
        for _ in range(config.grad_accum):
            batch = {k: v.to(device, non_blocking=True) for k, v in next(stream).items() if torch.is_tensor(v)}
            with _autocast(device, precision), _frozen(critic_params):
                losses = task.generator_losses(batch)
            scaler.scale(losses["total"] / config.grad_accum).backward()
            _accumulate(totals, losses, config.grad_accum)
            if task.critic is not None:
                with _autocast(device, precision):
                    critic_losses = task.critic_losses()
                scaler.scale(critic_losses["total"] / config.grad_accum).backward()
                _accumulate(totals, {f"critic_{k}": v for k, v in critic_losses.items()}, config.grad_accum)
        for group, optimiser in zip([params, critic_params], optimisers):
            _set_lr(optimiser, config, step)
            data_parallel.average_gradients(group, processes)
            scaler.unscale_(optimiser)
            if config.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(group, config.grad_clip)
            scaler.step(optimiser)
            optimiser.zero_grad(set_to_none=True)
        scaler.update()
        if ema is not None:
            ema.update(task.generator, step)
        step += 1
        progress.update(1)
        if step % config.log_every == 0 or step == 1 or step == config.last_step:
            table.add({"step": step, "minutes": minutes(), **totals})
            progress.set_postfix({k: f"{v:.4g}" for k, v in totals.items() if not k.startswith("critic")})
        finished = step >= config.last_step
        out_of_time = max_minutes is not None and (time.monotonic() - started) / 60 >= max_minutes
        out_of_time = data_parallel.any_rank(out_of_time, processes)
        if finished or out_of_time or step % config.checkpoint_every == 0:
            _save_checkpoint(directory, step, minutes(), task, optimisers, scaler, ema, config.keep_checkpoints, processes)
        if out_of_time and not finished:
            # A budgeted piece of a long run still yields usable weights (e.g. to ship or to fine-tune from).
            product = _export(task, ema, directory, provenance, step, minutes(), processes)
            log.write(f"{task.name}: wall-clock budget of {max_minutes} min reached at step {step} of {config.steps}; "
                      f"wrote {product}; run the same command again to continue")
            progress.close()
            return Outcome(step=step, finished=False, product=product, notes=log.lines)
    progress.close()
    product = _export(task, ema, directory, provenance, step, minutes(), processes)
    log.write(f"{task.name}: finished {step} steps, {minutes():.2f} training minutes in all; wrote {product}")
    return Outcome(step=step, finished=True, product=product, notes=log.lines)


def _export(task: Task, ema: Optional[EMA], directory: Path, provenance: Optional[dict[str, str]], step: int,
            minutes: float, processes: Processes) -> Optional[Path]:
    """Write the task's product (EMA weights where kept) on the main process; None elsewhere."""
    if not processes.is_main:
        return None
    weights = dict(ema.state_dict()) if ema is not None else {}
    weights = {**trainable_state(task.generator), **weights}
    return task.export(directory, weights, {**(provenance or {}), "steps": str(step), "minutes": f"{minutes:.2f}"})


def _optimiser(params: list[nn.Parameter], config: LoopConfig, lr: float) -> torch.optim.Optimizer:
    kind = torch.optim.AdamW if config.optimizer == "adamw" else torch.optim.Adam
    return kind(params, lr=lr, betas=config.betas, weight_decay=config.weight_decay)


def lr_factor(config: LoopConfig, step: int) -> float:
    """The fraction of the base learning rate used for `step` (0-based): a function of the step alone, so resumes are exact."""
    if config.lr_decay == "cosine":
        return 0.5 * (1 + math.cos(math.pi * min(step, config.steps) / config.steps))
    return 1.0


def _set_lr(optimiser: torch.optim.Optimizer, config: LoopConfig, step: int) -> None:
    for group in optimiser.param_groups:
        group.setdefault("base_lr", group["lr"])
        group["lr"] = group["base_lr"] * lr_factor(config, step)


def _autocast(device: torch.device, precision: Optional[torch.dtype]):
    if precision is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=precision)


@contextlib.contextmanager
def _frozen(parameters: list[nn.Parameter]):
    """The generator's adversarial term must not leave gradients in the discriminator."""
    for parameter in parameters:
        parameter.requires_grad_(False)
    try:
        yield
    finally:
        for parameter in parameters:
            parameter.requires_grad_(True)


def _accumulate(totals: dict[str, float], losses: dict[str, torch.Tensor], parts: int) -> None:
    for name, value in losses.items():
        totals[name] = totals.get(name, 0.0) + float(value.detach()) / parts


def _checkpoints(directory: Path) -> list[Path]:
    found = [p for p in (directory / "checkpoints").glob("step_*") if p.is_dir() and p.name[5:].isdigit()]
    return sorted(found, key=lambda p: int(p.name[5:]))


def _save_checkpoint(directory: Path, step: int, minutes: float, task: Task, optimisers: list, scaler, ema: Optional[EMA],
                     keep: int, processes: Processes) -> None:
    """Weights as safetensors, optimiser/scaler state as a tensors-only torch file; written by rank 0."""
    if not processes.is_main:
        return
    target = directory / "checkpoints" / f"step_{step}"
    partial = target.with_name(target.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    save_file(_contiguous(trainable_state(task.generator)), str(partial / "generator.safetensors"))
    if task.critic is not None:
        save_file(_contiguous(task.critic.state_dict()), str(partial / "critic.safetensors"))
    if ema is not None:
        save_file(_contiguous(ema.state_dict()), str(partial / "ema.safetensors"))
    torch.save(
        {"step": step, "minutes": minutes, "optimisers": [o.state_dict() for o in optimisers], "scaler": scaler.state_dict()},
        partial / "state.pt",
    )
    shutil.rmtree(target, ignore_errors=True)
    partial.rename(target)
    for old in _checkpoints(directory)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)


def _resume(directory: Path, task: Task, optimisers: list, scaler, ema: Optional[EMA], log: RunLog) -> tuple[int, float]:
    """Load the newest checkpoint, if any; returns (its step, training minutes before it)."""
    found = _checkpoints(directory)
    if not found:
        return 0, 0.0
    latest = found[-1]
    device = next(task.generator.parameters()).device
    _load_into(task.generator, load_file(str(latest / "generator.safetensors"), device=str(device)), latest)
    if task.critic is not None:
        task.critic.load_state_dict(load_file(str(latest / "critic.safetensors"), device=str(device)))
    if ema is not None:
        ema.load_state_dict(load_file(str(latest / "ema.safetensors"), device=str(device)))
    state = torch.load(latest / "state.pt", map_location=device, weights_only=True)
    for optimiser, saved in zip(optimisers, state["optimisers"]):
        optimiser.load_state_dict(saved)
    scaler.load_state_dict(state["scaler"])
    log.write(f"{task.name}: resumed from {latest} (step {state['step']})")
    return int(state["step"]), float(state["minutes"])


def _load_into(module: nn.Module, state: dict[str, torch.Tensor], source: Path) -> None:
    expected = trainable_state(module)
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise BadInput(
            f"checkpoint {source} does not match this configuration (missing {missing[:3]}, unexpected "
            f"{unexpected[:3]}); use a new output folder or the configuration it was made with"
        )
    module.load_state_dict(state, strict=False)


def _contiguous(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().contiguous() for k, v in state.items()}
