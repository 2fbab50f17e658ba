"""Build the backend's `run` request from what the user chose; the dock and Processing both call this.

Must run on the thread that owns the layer (the main thread for the dock, the
algorithm's thread for Processing): it reads QGIS objects and returns plain data
that any thread may then hand to the client.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Optional, Sequence

from qgis.core import (QgsCoordinateReferenceSystem, QgsProviderRegistry, QgsRasterLayer, QgsRectangle)


class LayerNotAFile(Exception):
    """The layer is not backed by a raster file the backend can read (WMS, XYZ, memory, ...)."""


def layer_file_path(layer: QgsRasterLayer) -> str:
    """The raster file behind `layer`; raises LayerNotAFile with a message saying what to do."""
    if layer is None or not layer.isValid():
        raise LayerNotAFile("choose a valid raster layer")
    if layer.providerType() != "gdal":
        raise LayerNotAFile(
            f"layer '{layer.name()}' comes from a '{layer.providerType()}' source (a web service or an in-memory "
            "layer), not a file. Save it as a GeoTIFF first (right-click > Export > Save As), then use that layer.")
    path = QgsProviderRegistry.instance().decodeUri("gdal", layer.source()).get("path", "")
    if not (os.path.isfile(path) or path.startswith("/vsi")):
        raise LayerNotAFile(
            f"layer '{layer.name()}' is not backed by a raster file (its source is {layer.source()!r}). "
            "Save it as a GeoTIFF first (right-click > Export > Save As), then use that layer.")
    return path


def crs_text(crs: QgsCoordinateReferenceSystem) -> Optional[str]:
    """A CRS string GDAL understands: the authority id when there is one, else WKT."""
    if not crs.isValid():
        return None
    return crs.authid() or crs.toWkt(QgsCoordinateReferenceSystem.WKT_PREFERRED_GDAL)


def build_request(*, input_path: str, output_path: str, scale: int, extent: Optional[QgsRectangle] = None,
                  extent_crs: Optional[QgsCoordinateReferenceSystem] = None, bands: Optional[Sequence[int]] = None,
                  weights: str = "", device: str = "auto", tile: int = 256, overlap: int = 32,
                  overwrite: bool = False) -> dict[str, Any]:
    """The JSON `run` request; its keys are exactly the backend's RunRequest fields.

    extent None (or empty) means the whole raster; empty `weights` means the
    weights shipped with the backend; empty `bands` lets the backend choose
    (1,2,3, or band 1 replicated for a single-band raster).
    """
    has_extent = extent is not None and not extent.isEmpty()
    return {
        "input": input_path,
        "output": output_path,
        "scale": int(scale),
        "extent": [extent.xMinimum(), extent.yMinimum(), extent.xMaximum(), extent.yMaximum()]
        if has_extent else None,
        "extent_crs": crs_text(extent_crs) if has_extent and extent_crs is not None else None,
        "bands": [int(b) for b in bands] if bands else None,
        "weights": weights or None,
        "device": device,
        "tile": int(tile),
        "overlap": int(overlap),
        "overwrite": bool(overwrite),
    }


def result_layer_name(input_name: str, scale: int) -> str:
    """How the result is named in the project: `<input> x4`."""
    return f"{input_name} x{scale}"


def default_output_path(folder: Path, input_name: str, scale: int) -> Path:
    """A new GeoTIFF path in `folder` named after the input and scale, never overwriting a file."""
    stem = "".join(c if c.isalnum() or c in "-_." else "_" for c in input_name).strip("_") or "raster"
    candidate = Path(folder) / f"{stem}_x{scale}.tif"
    number = 2
    while candidate.exists():
        candidate = Path(folder) / f"{stem}_x{scale}_{number}.tif"
        number += 1
    return candidate


def parse_bands(text: str) -> Optional[list[int]]:
    """"4,3,2" -> [4, 3, 2]; empty -> None (the backend's default); anything else raises ValueError."""
    parts = [p.strip() for p in text.replace(";", ",").split(",") if p.strip()]
    if not parts:
        return None
    try:
        return [int(p) for p in parts]
    except ValueError:
        raise ValueError(f"bands must be band numbers separated by commas, like 4,3,2 (got {text!r})") from None
