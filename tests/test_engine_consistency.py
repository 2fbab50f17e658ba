"""The consistency option and figures through the student's path: recorded in every output, back-projection
makes the output reduce to its input, and a nodata collar stays nodata."""

from __future__ import annotations

from typing import Optional

import numpy as np
import pytest
from osgeo import gdal

from backend.check import check_files
from backend.engine import Engine
from backend.resources import sample_raster_path
from plugin_fixtures import write_tiny_shipped_like_weights
from rasters import smooth_image, write_raster
from slimdiffsr_qgis.contract import RunRequest

FIGURE_KEYS = ("SLIMDIFFSR_CONSISTENCY_MAD", "SLIMDIFFSR_CONSISTENCY_MAD_FRACTION", "SLIMDIFFSR_CONSISTENCY_SHIFT",
               "SLIMDIFFSR_CONSISTENCY_SPECTRAL_ANGLE")


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> str:
    return write_tiny_shipped_like_weights(tmp_path_factory.mktemp("weights") / "tiny.safetensors")


def run(source: str, output: str, weights: Optional[str], consistency: bool) -> dict[str, str]:
    result = Engine().run(RunRequest(input=source, output=output, weights=weights, tile=48, overlap=12,
                                     device="cpu", consistency=consistency))
    dataset = gdal.Open(output)
    metadata = dataset.GetMetadata()
    dataset = None
    assert {key: metadata[key] for key in result.consistency} == result.consistency
    return metadata


def test_every_output_records_its_consistency_figures_and_the_option(tmp_path, weights):
    source = write_raster(str(tmp_path / "in.tif"), (smooth_image(3, 70, 90) * 9000).astype(np.uint16))
    metadata = run(source, str(tmp_path / "off.tif"), weights, consistency=False)
    assert all(key in metadata for key in FIGURE_KEYS)
    assert metadata["SLIMDIFFSR_CONSISTENCY"] == "off"


def test_back_projection_makes_the_shipped_students_output_reduce_to_its_input_within_half_a_percent(tmp_path):
    crop = str(tmp_path / "crop.tif")
    gdal.Translate(crop, str(sample_raster_path()), srcWin=[20, 30, 120, 100])
    off = float(run(crop, str(tmp_path / "off.tif"), None, False)["SLIMDIFFSR_CONSISTENCY_MAD_FRACTION"])
    on = run(crop, str(tmp_path / "on.tif"), None, True)
    assert on["SLIMDIFFSR_CONSISTENCY"] == "back-projected to the input"
    assert float(on["SLIMDIFFSR_CONSISTENCY_MAD_FRACTION"]) < 0.005 < off
    # The recorded figures are what `check` measures on the committed file.
    checked = check_files(str(tmp_path / "on.tif"), crop)
    assert checked.mean_abs_difference_fraction == pytest.approx(float(on["SLIMDIFFSR_CONSISTENCY_MAD_FRACTION"]),
                                                                 rel=1e-3)


def test_consistency_leaves_a_nodata_collar_untouched(tmp_path, weights):
    values = (smooth_image(1, 64, 64, seed=2) * 9000).astype(np.uint16) + 1
    values[:, :, :10] = 0
    source = write_raster(str(tmp_path / "collar.tif"), values, nodata=0)
    run(source, str(tmp_path / "on.tif"), weights, True)
    dataset = gdal.Open(str(tmp_path / "on.tif"))
    output = dataset.ReadAsArray()
    assert dataset.GetRasterBand(1).GetNoDataValue() == 0
    dataset = None
    assert (output[:, :40] == 0).all()
    assert (output[:, 40:] != 0).all()
