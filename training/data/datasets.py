"""Turn a config's `data` section into the datasets of `training.data.crops`: training crops and evaluation tiles.

`data.manifest` (from `python -m training.data.sources prepare`) gives scenes
with spatially disjoint train / validation / test blocks; `data.folder` takes
every image of a folder whole, in the role asked for (for quick runs and tests).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from slimdiffsr_qgis.contract import BadInput

from training.runtime.config import run_settings, typed_section
from training.data.crops import (CropDataset, CropSettings, SceneRef, dataset_options, scenes_from_folder,
                                 scenes_from_manifest)
from training.data.pairs import PairCrops


@dataclass(frozen=True)
class DataSettings(CropSettings):
    """The config's `data` section: where the scenes are, and how crops are drawn (CropSettings' keys and
    defaults, the same as CropDataset's)."""

    manifest: Optional[str] = None
    folder: Optional[str] = None
    bands: Optional[tuple[int, ...]] = None
    """The 1-based bands of a folder's images read as RGB; None: the first three."""


def data_settings(config: dict[str, Any]) -> DataSettings:
    """The config's data section, checked."""
    return typed_section(DataSettings, config, "data")


def scenes(config: dict[str, Any], role: str) -> list[SceneRef]:
    """The configured scenes; a folder's images are all put in `role`."""
    data = data_settings(config)
    if data.manifest:
        manifest = Path(data.manifest)
        if not manifest.is_file():
            raise BadInput(f"data manifest {manifest} does not exist; run python -m training.data.sources prepare first")
        return scenes_from_manifest(manifest)
    if data.folder:
        folder = Path(data.folder)
        if not folder.is_dir():
            raise BadInput(f"data folder {folder} does not exist")
        return scenes_from_folder(folder, data.bands, role=role)
    raise BadInput("the config's data section needs a 'manifest' or a 'folder'")


def training_dataset(config: dict[str, Any]) -> CropDataset:
    """Seeded training crops, `degraded_fraction` of them with degraded LR (Real-ESRGAN's chain, the sensor
    model or a mix: data.degradation), optionally single-band crops, real-pair crops (data.pair_fraction) and
    without some sensor families."""
    data = data_settings(config)
    run = run_settings(config)
    try:
        manifest = Path(data.manifest) if data.manifest else None
        if data.pair_fraction > 0 and manifest is None:
            raise ValueError("data.pair_fraction needs data.manifest (its real pairs); "
                             "run python -m training.data.sources prepare")
        pairs = PairCrops(manifest, run.scale, data.crop, exclude_sensors=data.exclude_sensors) \
            if data.pair_fraction > 0 else None
        return CropDataset(
            scenes(config, "train"), crop=data.crop, scale=run.scale, role="train", length=data.length,
            seed=data.seed, spec=run.normalisation, degraded_fraction=data.degraded_fraction,
            pair_fraction=data.pair_fraction, pairs=pairs, **dataset_options(data, manifest),
        )
    except ValueError as exc:
        raise BadInput(f"training data: {exc}") from None
