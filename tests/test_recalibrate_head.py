"""Recalibrating an error head on reference rasters of a sensor: through the command, with a tiny student
carrying the shipped file's metadata and a head beside it."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from osgeo import gdal

from backend.engine import Engine
from backend.models import load
from backend.models.error_head import head_beside, load_head
from backend.models.weights import file_sha256
from plugin_fixtures import student_with_head
from rasters import smooth_image, write_raster
from slimdiffsr_qgis.contract import RunRequest
from training.stages.recalibrate_head import below_median, main, measured_errors, raster_tiles


def _references(folder) -> list[str]:
    """A 3-band uint16 raster with a nodata corner, and a one-band float raster."""
    rgb = (smooth_image(3, 400, 400, seed=3) * 4000 + 200).astype(np.uint16)
    rgb[:, :100, :100] = 0
    single = smooth_image(1, 200, 200, seed=4).astype(np.float32)
    return [write_raster(str(folder / "rgb.tif"), rgb, nodata=0), write_raster(str(folder / "pan.tif"), single)]


def test_the_recalibrated_head_puts_half_of_the_reference_errors_below_its_median(tmp_path):
    weights = student_with_head(tmp_path)
    references = _references(tmp_path)
    out = tmp_path / "sensor" / "tiny.error.safetensors"
    assert main(["--student", weights, "--head", str(head_beside(weights)), "--out", str(out),
                 "--reference", *references]) == 0
    student = load(weights)
    spec = student.meta.get("normalisation")
    tiles = [tile for path in references for tile in raster_tiles(path, spec, (1, 2, 3))]
    assert len(tiles) == 3 + 1  # the 2 x 2 tiles of the RGB raster less the nodata corner, and the one-band one
    head = load_head(out, file_sha256(weights))
    assert float(head.meta["level_factor"]) > 0 and "rgb.tif, pan.tif: 4 tiles" in head.meta["recalibrated_on"]
    predicted, actual = measured_errors(student, head, tiles, consistency=True)
    assert below_median(predicted, actual) == pytest.approx(0.5, abs=0.01)
    before = measured_errors(student, load_head(head_beside(weights)), tiles, consistency=True)
    assert abs(below_median(*before) - 0.5) > 0.05, "the random head this starts from should be off"


def test_a_reference_without_a_whole_tile_and_an_overwrite_are_refused(tmp_path):
    weights = student_with_head(tmp_path)
    small = write_raster(str(tmp_path / "small.tif"), (smooth_image(3, 100, 300) * 255).astype(np.uint8))
    with pytest.raises(SystemExit, match="no 192 x 192 px tile"):
        main(["--student", weights, "--head", str(head_beside(weights)), "--out", str(tmp_path / "o.safetensors"),
              "--reference", small])
    with pytest.raises(SystemExit):
        main(["--student", weights, "--head", str(head_beside(weights)), "--out", str(head_beside(weights)),
              "--reference", small])
    two_bands = write_raster(str(tmp_path / "two.tif"), (smooth_image(2, 200, 200) * 255).astype(np.uint8))
    with pytest.raises(SystemExit, match="give three of them with --bands"):
        main(["--student", weights, "--head", str(head_beside(weights)), "--out", str(tmp_path / "o.safetensors"),
              "--reference", two_bands])


def test_a_run_with_the_recalibrated_head_beside_the_weights_writes_k_times_the_layer_and_says_so(tmp_path):
    (tmp_path / "shipped").mkdir()
    weights = student_with_head(tmp_path / "shipped")
    sensor = tmp_path / "sensor"
    sensor.mkdir()
    copied = shutil.copy(weights, sensor / "tiny.safetensors")
    assert main(["--student", weights, "--head", str(head_beside(weights)), "--out",
                 str(sensor / "tiny.error.safetensors"), "--reference", *_references(tmp_path)]) == 0
    factor = float(load_head(sensor / "tiny.error.safetensors").meta["level_factor"])
    source = write_raster(str(tmp_path / "in.tif"), (smooth_image(3, 40, 40, seed=5) * 255).astype(np.uint8))
    layers = []
    for folder, model in (("a", weights), ("b", copied)):
        out = tmp_path / folder
        out.mkdir()
        result = Engine().run(RunRequest(source, str(out / "out.tif"), weights=str(model), scale=4, device="cpu",
                                         uncertainty=str(out / "out_error.tif")))
        dataset = gdal.Open(result.uncertainty)
        layers.append((dataset.ReadAsArray(), dataset.GetMetadata()))
        dataset = None
    (before, plain), (after, recalibrated) = layers
    np.testing.assert_allclose(after, factor * before, rtol=1e-4)
    assert "SLIMDIFFSR_ERROR_HEAD_LEVEL_FACTOR" not in plain
    assert plain["SLIMDIFFSR_ERROR_HEAD_CALIBRATED_ON"].startswith("the training blocks of landsat8")
    assert float(recalibrated["SLIMDIFFSR_ERROR_HEAD_LEVEL_FACTOR"]) == pytest.approx(factor, rel=1e-5)
    assert "rgb.tif, pan.tif" in recalibrated["SLIMDIFFSR_ERROR_HEAD_CALIBRATED_ON"]
