"""Turn a config's `data` section into the datasets of `training.data.crops`: training crops and evaluation tiles.

`data.manifest` (from `python -m training.data.sources prepare`) gives scenes
with spatially disjoint train / validation / test blocks; `data.folder` takes
every image of a folder whole, in the role asked for (for quick runs and tests).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from slimdiffsr_qgis.contract import BadInput

from training.runtime.config import section
from training.data.crops import CropDataset, SceneRef, dataset_options, scenes_from_folder, scenes_from_manifest


def scenes(config: dict[str, Any], role: str) -> list[SceneRef]:
    """The configured scenes; a folder's images are all put in `role`."""
    data = section(config, "data")
    if data.get("manifest"):
        manifest = Path(data["manifest"])
        if not manifest.is_file():
            raise BadInput(f"data manifest {manifest} does not exist; run python -m training.data.sources prepare first")
        return scenes_from_manifest(manifest)
    if data.get("folder"):
        folder = Path(data["folder"])
        if not folder.is_dir():
            raise BadInput(f"data folder {folder} does not exist")
        bands: Sequence[int] | None = data.get("bands")
        return scenes_from_folder(folder, bands, role=role)
    raise BadInput("the config's data section needs a 'manifest' or a 'folder'")


def training_dataset(config: dict[str, Any]) -> CropDataset:
    """Seeded training crops, `degraded_fraction` of them with degraded LR (Real-ESRGAN's chain, the sensor
    model or a mix: data.degradation), optionally single-band crops and without some sensor families."""
    data = section(config, "data")
    try:
        manifest = Path(data["manifest"]) if data.get("manifest") else None
        return CropDataset(
            scenes(config, "train"), crop=int(data.get("crop", 512)), scale=int(config["scale"]), role="train",
            length=int(data.get("length", 100_000)), seed=int(data.get("seed", 0)),
            spec=str(config.get("normalisation", "percentile:2,98")),
            degraded_fraction=float(data.get("degraded_fraction", 1.0)), **dataset_options(data, manifest),
        )
    except ValueError as exc:
        raise BadInput(f"training data: {exc}") from None
