"""Find the shipped resources (default weights, sample raster) wherever the package lives.

From a checkout, `resources/` sits beside `backend/`; after `pip install .` it is
the package `slimdiffsr_resources`; inside the plugin zip it is the folder
`slimdiffsr_qgis/resources`. Callers ask here and never build those paths.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Optional

SAMPLE_RASTER = "sample/sentinel2_l1c_rgb.tif"


def resources_dir() -> Path:
    """The folder holding weights/, sample/ and icons/."""
    spec = importlib.util.find_spec("slimdiffsr_resources")
    if spec is not None and spec.submodule_search_locations:
        return Path(list(spec.submodule_search_locations)[0])
    here = Path(__file__).resolve().parent.parent
    for candidate in (here / "resources", here / "slimdiffsr_qgis" / "resources"):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError("the SlimDiffSR resources folder was not found; reinstall the package")


def default_weights_path(scale: int = 4) -> Optional[Path]:
    """The shipped student weights for `scale`, or None when none are shipped for it."""
    path = resources_dir() / "weights" / f"slimdiffsr_x{scale}.safetensors"
    return path if path.is_file() else None


def sample_raster_path() -> Path:
    """The small real Sentinel-2 crop used by `make demo` and the tests."""
    return resources_dir() / SAMPLE_RASTER
