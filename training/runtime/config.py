"""Read a training YAML config, apply command-line overrides, and read each section through its dataclass.

One file describes the whole chain (data, backbone, the three stages,
evaluation), so the stages agree on scale, data and where each stage's
product is; `--set section.key=value` changes one value for one run, and
`base: FILE` (relative to the config) makes a config the deep merge of FILE
and its own keys. Every section is read through a dataclass next to the code
it configures (`typed_section`), so a misspelt or mistyped key is an error
naming it, never a value silently ignored.
"""

from __future__ import annotations

import copy
import dataclasses
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence, TypeVar

import yaml

from slimdiffsr_qgis.contract import DEVICES, SUPPORTED_SCALES, BadInput

from training.data.crops import DEFAULT_SPEC
from training.runtime.loop import LoopConfig

T = TypeVar("T")
STAGE_FOLDERS = {"uncertainty": "uncertainty", "teacher": "teacher", "student": "student", "evaluate": "evaluation"}
RUN_CONFIG = "config.yaml"
PRODUCTS = {"uncertainty": "uncertainty.safetensors", "teacher": "teacher.safetensors", "student": "student.safetensors"}
BASE_KEY = "base"


@dataclass(frozen=True)
class RunSettings:
    """The top level of a config: what every stage shares, and the sections (each read by its own dataclass)."""

    output_dir: str
    scale: int
    device: str = "auto"
    cpu_threads: Optional[int] = None
    """torch's CPU threads; None: torch's own choice."""
    normalisation: str = DEFAULT_SPEC
    allow_fallbacks: bool = False
    """Whether a loss may run on its documented fallback when its pretrained network is not given. Off unless
    the config (or `--allow-fallbacks`) says so: a fallback changes what the run trains, so it must be asked
    for, not discovered in a log."""
    max_minutes: Optional[float] = None
    """Wall-clock budget of one call of a stage, used when `--max-minutes` is not given."""
    data: Optional[dict] = None
    backbone: Optional[dict] = None
    uncertainty: Optional[dict] = None
    teacher: Optional[dict] = None
    student: Optional[dict] = None
    evaluate: Optional[dict] = None
    pretrained: Optional[dict[str, dict[str, str]]] = None
    """What stood in each pretrained role of a stage that ran (`save_run_config`): a record only, read back
    unchanged, so a run's own config.yaml is a config that reruns it."""

    def __post_init__(self) -> None:
        if self.scale not in SUPPORTED_SCALES:
            raise BadInput(f"scale {self.scale} is not supported; use one of {', '.join(map(str, SUPPORTED_SCALES))}")
        if self.device not in DEVICES:
            raise BadInput(f"device must be one of {', '.join(DEVICES)}, not {self.device!r}")
        if self.cpu_threads is not None and self.cpu_threads < 1:
            raise BadInput(f"cpu_threads must be at least 1 (or null: torch's choice), not {self.cpu_threads}")
        if self.max_minutes is not None and self.max_minutes < 0:
            raise BadInput(f"max_minutes must not be negative, not {self.max_minutes}")


def load_config(path: Path, overrides: Sequence[str] = (), output_dir: Optional[str] = None) -> dict[str, Any]:
    """The config as a dict, its `base` merged in and its top level checked; overrides are "a.b=value" with
    value parsed as YAML."""
    config = _read_with_bases(Path(path), ())
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
    run_settings(config)
    return config


def _read_with_bases(path: Path, seen: tuple[Path, ...]) -> dict[str, Any]:
    """The YAML mapping at `path`, deep-merged over the config its `base` key names (recursively)."""
    if not path.is_file():
        raise BadInput(f"training config {path} does not exist")
    if path.resolve() in seen:
        raise BadInput(f"training config {path} is its own base (through {', '.join(str(p) for p in seen)})")
    with open(path, encoding="utf-8") as handle:
        config = yaml.safe_load(handle) or {}
    if not isinstance(config, dict):
        raise BadInput(f"training config {path} must be a mapping of sections")
    base = config.pop(BASE_KEY, None)
    if base is None:
        return config
    if not isinstance(base, str):
        raise BadInput(f"{BASE_KEY} in {path} must be a path relative to that file, not {base!r}")
    return _deep_merge(_read_with_bases(path.parent / base, (*seen, path.resolve())), config)


def _deep_merge(base: Mapping[str, Any], changes: Mapping[str, Any]) -> dict[str, Any]:
    """`base` with `changes` applied: mappings merge key by key, any other value replaces the base's."""
    merged = copy.deepcopy(dict(base))
    for key, value in changes.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def run_settings(config: Mapping[str, Any]) -> RunSettings:
    """The config's top level; an unknown key (a misspelt section too) is a BadInput naming it."""
    return typed(RunSettings, config, "")


def stage_dir(config: dict[str, Any], stage: str) -> Path:
    """Where a stage writes checkpoints, logs and its product."""
    return Path(run_settings(config).output_dir) / STAGE_FOLDERS[stage]


def product_path(config: dict[str, Any], stage: str, explicit: Optional[str] = None) -> Path:
    """A stage's product: the path the config gives, else the file the stage writes in its folder."""
    return Path(explicit) if explicit else stage_dir(config, stage) / PRODUCTS[stage]


def save_run_config(config: dict[str, Any], stage: str, pretrained: dict[str, str]) -> Path:
    """Write the config a stage ran with, plus what stood in each pretrained role, to its folder as config.yaml."""
    path = stage_dir(config, stage) / RUN_CONFIG
    path.parent.mkdir(parents=True, exist_ok=True)
    record = {**config, "pretrained": {stage: dict(pretrained)}}
    path.write_text(yaml.safe_dump(record, sort_keys=False, allow_unicode=True), encoding="utf-8")
    return path


def loop_config(config: dict[str, Any], stage: str) -> LoopConfig:
    """The stage's `loop` subsection as a LoopConfig."""
    return typed_section(LoopConfig, config, stage, "loop")


def typed_section(kind: type[T], config: Mapping[str, Any], *path: str) -> T:
    """The section at `path` (e.g. "data", or "student", "loop") as the dataclass `kind`; absent: all defaults.

    Every section of a config is read through a dataclass, so a misspelt key is
    an error naming the section and the key, never a value silently ignored.
    """
    values: Any = config
    for depth, name in enumerate(path):
        if not isinstance(values, Mapping):
            raise BadInput(f"{_named('.'.join(path[:depth]))} must be a mapping, not {values!r}")
        values = values.get(name)
        if values is None:
            values = {}
    return typed(kind, values, ".".join(path))


def typed(kind: type[T], values: Any, where: str) -> T:
    """The mapping `values` as the dataclass `kind`; `where` is its dotted path in errors ("" for the top level).

    Keys must be the dataclass's fields; values are checked against the fields'
    annotations (bool, int, float, str, Optional, tuple, list, dict and nested
    dataclasses, which are read the same way). A number YAML read as a string
    ("5e-5" has no dot) is accepted where a float is expected.
    """
    if not isinstance(values, Mapping):
        raise BadInput(f"{_named(where)} must be a mapping, not {values!r}")
    fields = {item.name: item for item in dataclasses.fields(kind) if item.init}
    unknown = [key for key in values if key not in fields]
    if unknown:
        raise BadInput(f"{_named(where)}: unknown key {unknown[0]!r} (it takes {', '.join(fields)})")
    hints = typing.get_type_hints(kind)
    checked = {key: _checked(value, hints[key], f"{where}.{key}" if where else key) for key, value in values.items()}
    missing = [name for name, item in fields.items() if name not in checked
               and item.default is dataclasses.MISSING and item.default_factory is dataclasses.MISSING]
    if missing:
        raise BadInput(f"{_named(where)} needs {', '.join(repr(name) for name in missing)}")
    try:
        return kind(**checked)
    except (TypeError, ValueError) as exc:
        raise BadInput(f"{_named(where)}: {exc}") from None


def _named(where: str) -> str:
    return f"config section {where}" if where else "the training config"


def _checked(value: Any, hint: Any, where: str) -> Any:
    """`value` as the annotation `hint` asks for; a BadInput naming `where` when it is not."""
    origin, arguments = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in arguments:
            return None
        options = [a for a in arguments if a is not type(None)]
        return _checked(value, options[0], where) if len(options) == 1 else value
    if dataclasses.is_dataclass(hint):
        return typed(hint, {} if value is None else value, where)
    if hint is bool:
        if not isinstance(value, bool):
            raise BadInput(f"{where} must be true or false, not {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise BadInput(f"{where} must be a whole number, not {value!r}")
        return value
    if hint is float:
        try:
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        except (TypeError, ValueError):
            raise BadInput(f"{where} must be a number, not {value!r}") from None
    if hint is str:
        if not isinstance(value, str):
            raise BadInput(f"{where} must be a string, not {value!r}")
        return value
    if origin in (tuple, list) or hint in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise BadInput(f"{where} must be a list, not {value!r}")
        if origin is tuple and arguments and arguments[-1] is not Ellipsis:
            if len(value) != len(arguments):
                raise BadInput(f"{where} must be a list of {len(arguments)} values, not {value!r}")
            items = [_checked(v, a, f"{where}[{i}]") for i, (v, a) in enumerate(zip(value, arguments))]
        else:
            item_hint = arguments[0] if arguments else Any
            items = [_checked(v, item_hint, f"{where}[{i}]") for i, v in enumerate(value)]
        return list(items) if (origin or hint) is list else tuple(items)
    if origin is dict or hint is dict:
        if not isinstance(value, Mapping):
            raise BadInput(f"{where} must be a mapping, not {value!r}")
        return dict(value)
    return value
