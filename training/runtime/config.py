"""Read a training YAML config, apply command-line overrides, and find each stage's folder and inputs.

One file describes the whole chain (data, backbone, the three stages,
evaluation), so the stages agree on scale, data and where each stage's
product is; `--set section.key=value` changes one value for one run.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Optional, Sequence, TypeVar

import yaml

from slimdiffsr_qgis.contract import BadInput

from training.runtime.loop import LoopConfig

T = TypeVar("T")
STAGE_FOLDERS = {"uncertainty": "uncertainty", "teacher": "teacher", "student": "student", "evaluate": "evaluation"}
RUN_CONFIG = "config.yaml"
PRODUCTS = {"uncertainty": "uncertainty.safetensors", "teacher": "teacher.safetensors", "student": "student.safetensors"}


def load_config(path: Path, overrides: Sequence[str] = (), output_dir: Optional[str] = None) -> dict[str, Any]:
    """The config as a dict; overrides are "a.b=value" with value parsed as YAML."""
    if not Path(path).is_file():
        raise BadInput(f"training config {path} does not exist")
    with open(path, encoding="utf-8") as handle:
        config = yaml.safe_load(handle) or {}
    config = copy.deepcopy(config)
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise BadInput(f"override {item!r} must look like section.key=value")
        target = config
        *parents, leaf = key.split(".")
        for part in parents:
            target = target.setdefault(part, {})
            if not isinstance(target, dict):
                raise BadInput(f"override {item!r}: {part!r} is not a section")
        target[leaf] = yaml.safe_load(value)
    if output_dir is not None:
        config["output_dir"] = output_dir
    for required in ("output_dir", "scale"):
        if required not in config:
            raise BadInput(f"training config {path} has no {required!r}")
    return config


def section(config: dict[str, Any], name: str) -> dict[str, Any]:
    """A top-level section (empty dict when absent)."""
    value = config.get(name) or {}
    if not isinstance(value, dict):
        raise BadInput(f"config section {name!r} must be a mapping")
    return value


def stage_dir(config: dict[str, Any], stage: str) -> Path:
    """Where a stage writes checkpoints, logs and its product."""
    return Path(config["output_dir"]) / STAGE_FOLDERS[stage]


def product_path(config: dict[str, Any], stage: str, explicit: Optional[str] = None) -> Path:
    """A stage's product: the path the config gives, else the file the stage writes in its folder."""
    return Path(explicit) if explicit else stage_dir(config, stage) / PRODUCTS[stage]


def allow_fallbacks(config: dict[str, Any]) -> bool:
    """Whether a loss may run on its documented fallback when its pretrained network is not given.

    Off unless the config (or `--allow-fallbacks`) says so: a fallback changes
    what the run trains, so it must be asked for, not discovered in a log.
    """
    value = config.get("allow_fallbacks", False)
    if not isinstance(value, bool):
        raise BadInput(f"allow_fallbacks must be true or false, not {value!r}")
    return value


def save_run_config(config: dict[str, Any], stage: str, pretrained: dict[str, str]) -> Path:
    """Write the config a stage ran with, plus what stood in each pretrained role, to its folder as config.yaml."""
    path = stage_dir(config, stage) / RUN_CONFIG
    path.parent.mkdir(parents=True, exist_ok=True)
    record = {**config, "pretrained": {stage: dict(pretrained)}}
    path.write_text(yaml.safe_dump(record, sort_keys=False, allow_unicode=True), encoding="utf-8")
    return path


def loop_config(config: dict[str, Any], stage: str) -> LoopConfig:
    """The stage's `loop` subsection as a LoopConfig."""
    return settings(LoopConfig, config, stage, "loop")


def settings(kind: type[T], config: dict[str, Any], stage: str, name: str) -> T:
    """A stage's subsection as the dataclass `kind`; an unknown or mistyped key is a BadInput naming it."""
    return typed_section(kind, config, stage, name)


def typed_section(kind: type[T], config: dict[str, Any], *path: str) -> T:
    """The section at `path` (e.g. "data", or "student", "loop") as the dataclass `kind`.

    Every section of a config is read through a dataclass, so a misspelt key is
    an error naming the section and the key, never a value silently ignored.
    """
    values: Any = config
    for depth, name in enumerate(path):
        values = section(values, name) if depth == 0 else _subsection(values, path[: depth + 1])
    try:
        return kind(**dict(values))
    except TypeError as exc:
        raise BadInput(f"config section {'.'.join(path)}: {exc}") from None


def _subsection(parent: dict[str, Any], path: Sequence[str]) -> dict[str, Any]:
    value = parent.get(path[-1]) or {}
    if not isinstance(value, dict):
        raise BadInput(f"config section {'.'.join(path)} must be a mapping")
    return value
