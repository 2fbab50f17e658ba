"""The plugin's persistent settings (QgsSettings under `slimdiffsr/`), read and written in one place."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from qgis.core import QgsSettings

PREFIX = "slimdiffsr/"
DEVICES = ("auto", "cpu", "cuda")
DEFAULT_TILE = 256
DEFAULT_OVERLAP = 32
# The torch pip requirement first-run set-up installs. A setting, so a user with a
# CUDA card can ask for another build, e.g. "torch==2.13.0 --index-url <their index>".
DEFAULT_TORCH_REQUIREMENT = "torch==2.13.0"


@dataclass
class PluginSettings:
    """What the user chose once and the dock, Processing and set-up reuse.

    backend_python: interpreter for the backend; empty means discover it.
    weights: default safetensors file; empty means the weights shipped with the backend.
    output_folder: where the dock writes results when no file is given (a
        persistent folder, never a temp dir that vanishes).
    """

    backend_python: str = ""
    weights: str = ""
    device: str = "auto"
    tile: int = DEFAULT_TILE
    overlap: int = DEFAULT_OVERLAP
    output_folder: str = ""
    torch_requirement: str = DEFAULT_TORCH_REQUIREMENT

    def resolved_output_folder(self) -> Path:
        """The output folder to use: the chosen one, else `SlimDiffSR` in the user's home."""
        return Path(self.output_folder) if self.output_folder else Path.home() / "SlimDiffSR"


def load_settings() -> PluginSettings:
    """Read every setting, falling back to the defaults above."""
    stored = QgsSettings()
    defaults = PluginSettings()
    device = str(stored.value(PREFIX + "device", defaults.device))
    return PluginSettings(
        backend_python=str(stored.value(PREFIX + "backend_python", defaults.backend_python) or ""),
        weights=str(stored.value(PREFIX + "weights", defaults.weights) or ""),
        device=device if device in DEVICES else defaults.device,
        tile=int(stored.value(PREFIX + "tile", defaults.tile)),
        overlap=int(stored.value(PREFIX + "overlap", defaults.overlap)),
        output_folder=str(stored.value(PREFIX + "output_folder", defaults.output_folder) or ""),
        torch_requirement=str(stored.value(PREFIX + "torch_requirement", defaults.torch_requirement)
                              or defaults.torch_requirement),
    )


def save_settings(settings: PluginSettings) -> None:
    """Write every setting."""
    stored = QgsSettings()
    for key, value in vars(settings).items():
        stored.setValue(PREFIX + key, value)
