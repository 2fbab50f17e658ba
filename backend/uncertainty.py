"""The uncertainty layer of a run: the median absolute error expected of every output pixel, in the output's units.

The error head (`backend.models.error_head`) beside the student's weights predicts, per HR pixel of each
band pass, the median absolute error in the model's [0, 1] units: half of the pixel's values are expected to
err by less (docs/trust.md gives its calibration). The engine runs it on every tile right after the student,
blends its maps with the same weights as the output, and this module turns them into the output's units
(times each band's normalisation span) and writes them as a float32 GeoTIFF on exactly the output's grid,
NaN where the output is nodata.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np
import torch

from slimdiffsr_qgis.contract import BadInput, RunRequest

from .models.error_head import LEVEL_KEY, ErrorHead, calibrated_on, head_beside, head_output, load_head, output_kind
from .normalisation import Normalisation
from .raster import OutputBand, OutputRaster, SourceRaster, Window

DESCRIPTION = ("Median absolute error expected of each output pixel, in the output's units: half of its values "
               "are expected to err by less, as predicted by the error head")


def load_error_head(request: RunRequest, weights: Optional[str], sha256: Optional[str],
                    device: torch.device) -> ErrorHead:
    """The error head trained for `weights` and for the output this request writes; BadInput saying what to
    do when there is none or it learnt another output."""
    if not weights or not sha256:
        raise BadInput("an uncertainty layer needs student weights with an error head beside them; the "
                       "classical baseline and models passed in code have none")
    path = head_beside(weights)
    if path is None:
        raise BadInput(f"no error head beside {weights} ({Path(weights).name[:-len('.safetensors')]}"
                       ".error.safetensors); train one with python -m training.stages.error_head --student "
                       f"{weights} --out ... --consistency, or run without an uncertainty layer")
    head = load_head(path, sha256, device=str(device))
    wanted = output_kind(request.consistency)
    if head_output(head) != wanted:
        raise BadInput(f"the error head {path.name} learnt the error of {_outputs(head_output(head))}, but this run "
                       f"writes {_outputs(wanted)}; run with consistency {'off' if request.consistency else 'on'}, "
                       "or train a head for these outputs (python -m training.stages.error_head)")
    return head


def _outputs(kind: str) -> str:
    return "raw outputs" if kind == output_kind(False) else f"outputs {kind}"


def to_output_units(errors: np.ndarray, normalisation: Normalisation) -> np.ndarray:
    """[N, h, w] errors in model units -> the output's units: times each band's normalisation span."""
    span = np.array(normalisation.spans(errors.shape[0]), dtype=np.float64).reshape(-1, 1, 1)
    return (errors.astype(np.float64) * span).astype(np.float32)


def error_raster(path: str, request: RunRequest, source: SourceRaster, window: Window, width: int, height: int,
                 head_file: str, head: ErrorHead) -> OutputRaster:
    """The float32 uncertainty GeoTIFF on the output's grid, one band per output band, NaN as nodata; its
    metadata names the head, where its level was set (the families it trained on, or the references of a
    recalibration to a sensor) and a recalibration's factor."""
    bands = [OutputBand(band.colour, f"median |error| of {band.description or f'band {number}'}", float("nan"))
             for band, number in zip(source.output_bands(np.dtype(np.float32)), source.band_numbers)]
    metadata = {"SLIMDIFFSR_UNCERTAINTY": DESCRIPTION, "SLIMDIFFSR_ERROR_HEAD": head_file,
                "SLIMDIFFSR_UNCERTAINTY_OF": Path(request.output).name,
                "SLIMDIFFSR_ERROR_HEAD_CALIBRATED_ON": calibrated_on(head)}
    if LEVEL_KEY in head.meta:
        metadata["SLIMDIFFSR_ERROR_HEAD_LEVEL_FACTOR"] = head.meta[LEVEL_KEY]
    return OutputRaster(path, width, height, np.dtype(np.float32), source.output_geotransform(window, request.scale),
                        source.wkt, bands, False, metadata)
