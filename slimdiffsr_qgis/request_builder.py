"""Build the backend's `run` request from what the user chose; the dock and Processing both call this.

Must run on the thread that owns the layer (the main thread: the dock's click,
Processing's prepareAlgorithm): it reads QGIS objects and returns a checked
RunRequest that any thread may then hand to the shared Job.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Collection, Optional, Sequence

from qgis.core import QgsCoordinateReferenceSystem, QgsProviderRegistry, QgsRasterLayer, QgsRectangle

from .contract import DEFAULT_CONSISTENCY, DEFAULT_OVERLAP, DEFAULT_TILE, RunRequest


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
                  rgb: Optional[Sequence[int]] = None, weights: str = "", device: str = "auto", tile: int = DEFAULT_TILE,
                  overlap: int = DEFAULT_OVERLAP, overwrite: bool = False, consistency: bool = DEFAULT_CONSISTENCY,
                  uncertainty: Optional[str] = None) -> RunRequest:
    """The `run` request, checked by the contract (BadInput names the bad field).

    extent None (or empty) means the whole raster; empty `weights` means the
    weights shipped with the backend; empty `bands` writes every band; empty
    `rgb` lets the backend choose the colour triplet; `consistency` back-projects
    the output onto the input; `uncertainty` (a path, or None/empty for none) asks
    for the expected-error layer.
    """
    has_extent = extent is not None and not extent.isEmpty()
    return RunRequest(
        input=input_path,
        output=output_path,
        scale=scale,
        extent=(extent.xMinimum(), extent.yMinimum(), extent.xMaximum(), extent.yMaximum()) if has_extent else None,
        extent_crs=crs_text(extent_crs) if has_extent and extent_crs is not None else None,
        bands=tuple(bands) if bands else None,
        rgb=tuple(rgb) if rgb else None,
        weights=weights or None,
        device=device,
        tile=tile,
        overlap=overlap,
        overwrite=overwrite,
        consistency=consistency,
        uncertainty=uncertainty or None,
    )


def numbered(base: str, number: int) -> str:
    """`base` for the first of its kind, `base (2)`, `base (3)`, ... after it."""
    return base if number == 1 else f"{base} ({number})"


def result_number(input_name: str, scale: int, taken_names: Collection[str], folder: Optional[Path] = None,
                  start: int = 1, with_error_layer: bool = False) -> int:
    """The first number from `start` whose layer name is free in the project and, with `folder`, whose default
    file (and, with `with_error_layer`, its expected-error file) is new.

    One number serves all, so `field x4 (2)` is the layer of `field_x4_2.tif` and `field_x4_2_error.tif`.
    """
    def files_taken(number: int) -> bool:
        output = default_output_path(folder, input_name, scale, number)
        return output.exists() or (with_error_layer and Path(error_layer_path(str(output))).exists())

    number = start
    while result_layer_name(input_name, scale, number) in taken_names or (folder is not None and files_taken(number)):
        number += 1
    return number


def result_layer_name(input_name: str, scale: int, number: int = 1) -> str:
    """How the result is named in the project: `<input> x4`, then `<input> x4 (2)`, ..."""
    return numbered(f"{input_name} x{scale}", number)


def default_output_path(folder: Path, input_name: str, scale: int, number: int = 1) -> Path:
    """The GeoTIFF named after the input and scale in `folder`: `<input>_x4.tif`, then `<input>_x4_2.tif`, ..."""
    stem = "".join(c if c.isalnum() or c in "-_." else "_" for c in input_name).strip("_") or "raster"
    suffix = "" if number == 1 else f"_{number}"
    return Path(folder) / f"{stem}_x{scale}{suffix}.tif"


def error_layer_path(output: str) -> str:
    """Where the expected-error layer of `output` goes: `_error` before its suffix (`field_x4_error.tif`)."""
    path = Path(output)
    return str(path.with_name(f"{path.stem}_error{path.suffix or '.tif'}"))


def error_layer_name(result_name: str) -> str:
    """How the expected-error layer of the result layer `result_name` is named in the project."""
    return f"{result_name} expected error"


def parse_bands(text: str, what: str = "bands") -> Optional[list[int]]:
    """"4,3,2" -> [4, 3, 2]; empty -> None (the backend's default); anything else raises ValueError."""
    parts = [p.strip() for p in text.replace(";", ",").split(",") if p.strip()]
    if not parts:
        return None
    try:
        return [int(p) for p in parts]
    except ValueError:
        raise ValueError(f"{what} must be band numbers separated by commas, like 4,3,2 (got {text!r})") from None
