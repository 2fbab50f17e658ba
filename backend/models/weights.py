"""Self-describing weights files: safetensors tensors plus the config and provenance in the metadata.

A weights file alone rebuilds its network: `load(path)` reads the config from the
file's metadata, checks it against the bounds of any real preset and every tensor
shape in the file's header against the shapes the config implies (from a network
built on the meta device, which allocates nothing), and only then builds the
student, so a small crafted file cannot make the loader allocate gigabytes. Only
safetensors is read, never a pickle (which can run code). Every problem with a file
is a `BadInput` whose one-line message names the file and what is wrong.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from pathlib import Path
from typing import Any, Optional, Union

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from slimdiffsr_qgis.contract import BadInput
from .config import StudentConfig
from .student import SlimDiffSR, build

CONFIG_KEY = "slimdiffsr_config"
FORMAT_KEY = "format"  # safetensors' own convention: "pt" for PyTorch tensors
RESERVED_KEYS = (CONFIG_KEY, FORMAT_KEY)
FLOAT_DTYPES = ("F16", "BF16", "F32", "F64")  # safetensors' names of the dtypes a student's tensors may have
PathLike = Union[str, os.PathLike]


def save(model: nn.Module, path: PathLike, meta: Optional[dict[str, str]] = None) -> None:
    """Writes the model's tensors, config and provenance `meta` (str -> str) to a safetensors file.

    The file is written beside the target and renamed at the end, so a failed save
    never leaves a half-written weights file under the target name.
    """
    model = getattr(model, "_orig_mod", model)  # a torch.compile wrapper saves its module
    if not isinstance(model, SlimDiffSR):
        raise TypeError(f"save() takes a SlimDiffSR student, not {type(model).__name__}")
    meta = dict(meta or {})
    bad = [key for key, value in meta.items() if not isinstance(key, str) or not isinstance(value, str)]
    if bad:
        raise TypeError(f"meta must map str to str; bad entries: {bad}")
    reserved = sorted(set(meta) & set(RESERVED_KEYS))
    if reserved:
        raise ValueError(f"meta may not use the reserved key(s) {reserved}")
    tensors = {name: t.detach().to("cpu").contiguous() for name, t in model.state_dict().items()}
    metadata = {**meta, FORMAT_KEY: "pt", CONFIG_KEY: json.dumps(model.config.to_dict(), sort_keys=True)}
    target = Path(path)
    partial = target.with_name(target.name + ".partial")
    try:
        save_file(tensors, str(partial), metadata=metadata)
        os.replace(partial, target)
    finally:
        partial.unlink(missing_ok=True)


def read_metadata(path: PathLike) -> dict[str, Any]:
    """{"config": config dict, "meta": provenance dict, "parameters": count} without building the model.

    The tensors' shapes are checked against the config, so a file that `load` would refuse is refused here too.
    """
    metadata, shapes = _read_header(path)
    config = _config_from(path, metadata)
    _check_tensors(path, shapes, expected_shapes(config))
    meta = {key: value for key, value in metadata.items() if key not in RESERVED_KEYS}
    return {"config": config.to_dict(), "meta": meta, "parameters": sum(math.prod(s) for s in shapes.values())}


def load(path: PathLike, device: Union[str, torch.device] = "cpu") -> SlimDiffSR:
    """The student stored in `path`, in eval mode, with `.config` and `.meta` (the provenance)."""
    metadata, shapes = _read_header(path)
    config = _config_from(path, metadata)
    _check_tensors(path, shapes, expected_shapes(config))
    model = build(config)
    try:
        tensors = load_file(str(path), device="cpu")
    except (SafetensorError, OSError) as exc:
        raise BadInput(f"{path}: cannot read its tensors ({_one_line(exc)})") from exc
    model.load_state_dict(tensors, strict=True)
    model.meta = {key: value for key, value in metadata.items() if key not in RESERVED_KEYS}
    return model.to(device).eval()


def meta_model(config: StudentConfig) -> SlimDiffSR:
    """The student for `config` on the meta device: every shape, no memory and no initialisation."""
    with torch.device("meta"):
        return build(config)


def expected_shapes(config: StudentConfig) -> dict[str, tuple[int, ...]]:
    """Tensor name -> shape of the state dict `config` implies, computed without allocating it."""
    return {name: tuple(tensor.shape) for name, tensor in meta_model(config).state_dict().items()}


def _read_header(path: PathLike) -> tuple[dict[str, str], dict[str, tuple[int, ...]]]:
    """(metadata, tensor name -> shape) from the file's header; BadInput if it is not safetensors."""
    if not os.path.isfile(path):
        raise BadInput(f"{path}: weights file not found")
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
            slices = {name: handle.get_slice(name) for name in handle.keys()}
            shapes = {name: tuple(piece.get_shape()) for name, piece in slices.items()}
            not_float = sorted(name for name, piece in slices.items() if piece.get_dtype() not in FLOAT_DTYPES)
    except (SafetensorError, OSError, ValueError) as exc:
        raise BadInput(
            f"{path}: not a readable safetensors weights file ({_one_line(exc)}); "
            "only .safetensors weights are accepted"
        ) from exc
    if not_float:
        raise BadInput(f"{path}: {len(not_float)} tensor(s) are not floating point (e.g. {not_float[0]}); "
                       "a SlimDiffSR weights file holds float tensors only")
    return metadata, shapes


def _config_from(path: PathLike, metadata: dict[str, str]) -> StudentConfig:
    if CONFIG_KEY not in metadata:
        raise BadInput(f"{path}: safetensors file has no SlimDiffSR config in its metadata (not a SlimDiffSR weights file)")
    try:
        return StudentConfig.from_dict(json.loads(metadata[CONFIG_KEY]))
    except (ValueError, RecursionError) as exc:  # JSONDecodeError is a ValueError
        raise BadInput(f"{path}: bad SlimDiffSR config in its metadata ({_one_line(exc)})") from exc


def _check_tensors(path: PathLike, found: dict[str, tuple[int, ...]], expected: dict[str, tuple[int, ...]]) -> None:
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    wrong = sorted(name for name in set(found) & set(expected) if found[name] != expected[name])
    problems = []
    if missing:
        problems.append(f"{len(missing)} tensor(s) missing (e.g. {missing[0]})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected tensor(s) (e.g. {unexpected[0]})")
    if wrong:
        name = wrong[0]
        problems.append(f"{len(wrong)} tensor(s) of the wrong shape (e.g. {name}: {found[name]} instead of {expected[name]})")
    if problems:
        raise BadInput(f"{path}: tensors do not match the config in its metadata: {'; '.join(problems)}")


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def file_sha256(path: str) -> str:
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
