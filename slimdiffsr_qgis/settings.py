"""The plugin's persistent settings (QgsSettings under `slimdiffsr/`), read and written in one place."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from qgis.core import QgsSettings

from .contract import DEFAULT_OVERLAP, DEFAULT_TILE, DEVICES
from .download_plan import Proxy, proxy_from_qgis

PREFIX = "slimdiffsr/"
# QGIS's own network settings that first-run set-up hands to pip.
# What every profile stored as its PyTorch requirement when that was a setting with this default; it
# never was the user's choice, so it reads as "let set-up choose" (which picks the CPU or CUDA build).
OLD_DEFAULT_TORCH_REQUIREMENT = "torch==2.13.0"
PROXY_KEYS = ("proxy/proxyEnabled", "proxy/proxyType", "proxy/proxyHost", "proxy/proxyPort", "proxy/proxyUser",
              "proxy/proxyPassword")


@dataclass
class PluginSettings:
    """What the user chose once and the dock, Processing and set-up reuse.

    backend_python: interpreter for the backend; empty means discover it.
    weights: default safetensors file; empty means the weights shipped with the backend.
    output_folder: where the dock writes results when no file is given (a
        persistent folder, never a temp dir that vanishes).
    torch_requirement: pip arguments for PyTorch that replace set-up's own
        choice (e.g. a build for another CUDA version); empty lets set-up choose.
    """

    backend_python: str = ""
    weights: str = ""
    device: str = "auto"
    tile: int = DEFAULT_TILE
    overlap: int = DEFAULT_OVERLAP
    output_folder: str = ""
    torch_requirement: str = ""

    def resolved_output_folder(self) -> Path:
        """The output folder to use: the chosen one, else `SlimDiffSR` in the user's home."""
        return Path(self.output_folder) if self.output_folder else Path.home() / "SlimDiffSR"


def load_settings() -> PluginSettings:
    """Read every setting, falling back to the defaults above."""
    stored = QgsSettings()
    defaults = PluginSettings()
    device = str(stored.value(PREFIX + "device", defaults.device))
    torch_requirement = str(stored.value(PREFIX + "torch_requirement", defaults.torch_requirement) or "").strip()
    return PluginSettings(
        backend_python=str(stored.value(PREFIX + "backend_python", defaults.backend_python) or ""),
        weights=str(stored.value(PREFIX + "weights", defaults.weights) or ""),
        device=device if device in DEVICES else defaults.device,
        tile=int(stored.value(PREFIX + "tile", defaults.tile)),
        overlap=int(stored.value(PREFIX + "overlap", defaults.overlap)),
        output_folder=str(stored.value(PREFIX + "output_folder", defaults.output_folder) or ""),
        torch_requirement="" if torch_requirement == OLD_DEFAULT_TORCH_REQUIREMENT else torch_requirement,
    )


def save_settings(settings: PluginSettings) -> None:
    """Write every setting."""
    stored = QgsSettings()
    for key, value in vars(settings).items():
        stored.setValue(PREFIX + key, value)


def load_proxy() -> Optional[Proxy]:
    """The proxy QGIS itself uses (Settings > Options > Network), for pip during set-up."""
    stored = QgsSettings()
    return proxy_from_qgis({key: stored.value(key, "") for key in PROXY_KEYS})
