"""The uncertainty layer through the student's path: on the output's grid, NaN where the output is nodata,
in the output's units, and refused with a message naming what to do when no fitting error head exists."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from osgeo import gdal

from backend.engine import Engine
from backend.models.error_head import MEAN, MEDIAN, MEDIAN_OF_B
from plugin_fixtures import student_with_head, write_tiny_shipped_like_weights
from rasters import smooth_image, write_raster
from slimdiffsr_qgis.contract import BadInput, RunRequest


def request(source: str, folder: Path, weights: str, **fields) -> RunRequest:
    return RunRequest(input=source, output=str(folder / "out.tif"), weights=weights, tile=32, overlap=8,
                      device="cpu", uncertainty=str(folder / "out_error.tif"), **fields)


def test_the_layer_lies_on_the_outputs_grid_with_nan_where_the_output_is_nodata(tmp_path):
    weights = student_with_head(tmp_path)
    values = (smooth_image(4, 50, 70) * 9000).astype(np.uint16) + 1
    values[:, :, :6] = 0
    source = write_raster(str(tmp_path / "in.tif"), values, nodata=0)
    result = Engine().run(request(source, tmp_path, weights))
    assert result.uncertainty == str(tmp_path / "out_error.tif")
    output, errors = gdal.Open(result.output), gdal.Open(result.uncertainty)
    assert (errors.RasterXSize, errors.RasterYSize, errors.RasterCount) == (280, 200, 4)
    assert errors.GetGeoTransform() == output.GetGeoTransform()
    assert errors.GetProjection() == output.GetProjection()
    assert errors.GetRasterBand(1).DataType == gdal.GDT_Float32
    assert np.isnan(errors.GetRasterBand(1).GetNoDataValue())
    assert "Median absolute error" in errors.GetMetadataItem("SLIMDIFFSR_UNCERTAINTY")
    calibrated_on = errors.GetMetadataItem("SLIMDIFFSR_ERROR_HEAD_CALIBRATED_ON")
    assert calibrated_on.startswith("the training blocks of landsat8, neon, sentinel2;")
    assert "python -m training.stages.recalibrate_head" in calibrated_on
    expected = errors.ReadAsArray()
    output = errors = None
    assert np.isnan(expected[:, :, :24]).all(), "the nodata collar is nodata in the layer too"
    inside = expected[:, :, 24:]
    assert np.isfinite(inside).all() and (inside > 0).all()
    # Output units: a band stretched over ~9000 DN has errors of tens of DN, not fractions of one.
    assert inside.mean() > 1.0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.tif", "out.tif", "out_error.tif", "tiny.error.safetensors",
                                                          "tiny.safetensors"]


def test_the_layer_is_the_median_error_whichever_statistic_the_head_learnt(tmp_path):
    source = write_raster(str(tmp_path / "in.tif"), (smooth_image(3, 40, 40) * 255).astype(np.uint8))
    layers = {}
    for statistic in (MEDIAN, MEAN):
        folder = tmp_path / statistic.split()[0]
        folder.mkdir()
        result = Engine().run(request(source, folder, student_with_head(folder, statistic=statistic)))
        layers[statistic] = gdal.Open(result.uncertainty).ReadAsArray()
    # A Laplace-scale head's b becomes its median b ln 2; the same weights read as a median head write them as is.
    np.testing.assert_allclose(layers[MEAN], layers[MEDIAN] * MEDIAN_OF_B, rtol=1e-5)


def test_weights_without_a_head_are_refused_before_any_compute(tmp_path):
    weights = write_tiny_shipped_like_weights(tmp_path / "alone.safetensors")
    source = write_raster(str(tmp_path / "in.tif"), (smooth_image(3, 40, 40) * 255).astype(np.uint8))
    steps = []
    with pytest.raises(BadInput, match="no error head beside .*train one with python -m training.stages.error_head"):
        Engine().run(request(source, tmp_path, weights), progress=lambda done, total: steps.append(done))
    assert steps == [] and not (tmp_path / "out.tif").exists()


def test_a_head_for_the_other_output_is_refused(tmp_path):
    weights = student_with_head(tmp_path, consistency=True)
    source = write_raster(str(tmp_path / "in.tif"), (smooth_image(3, 40, 40) * 255).astype(np.uint8))
    with pytest.raises(BadInput, match="run with consistency on"):
        Engine().run(request(source, tmp_path, weights, consistency=False))


def test_the_layer_and_the_output_must_be_different_files(tmp_path):
    with pytest.raises(BadInput, match="different files"):
        RunRequest(input="in.tif", output=str(tmp_path / "o.tif"), uncertainty=str(tmp_path / "o.tif"))


@pytest.mark.parametrize("scale", [4, 2])
def test_the_shipped_weights_of_each_scale_with_a_head_write_a_layer_on_their_outputs_grid(tmp_path, scale):
    """The default weights of the scale (weights=None), their recorded normalisation and the head shipped beside
    them, as a user's run with --uncertainty takes them."""
    source = write_raster(str(tmp_path / "in.tif"), (smooth_image(4, 36, 44) * 9000).astype(np.uint16) + 100)
    run = RunRequest(input=source, output=str(tmp_path / "out.tif"), scale=scale, tile=32, overlap=12,
                     device="cpu", uncertainty=str(tmp_path / "out_error.tif"))
    result = Engine().run(run)
    output, errors = gdal.Open(result.output), gdal.Open(result.uncertainty)
    assert (errors.RasterXSize, errors.RasterYSize, errors.RasterCount) == (44 * scale, 36 * scale, 4)
    assert errors.GetGeoTransform() == output.GetGeoTransform()
    assert errors.GetMetadataItem("SLIMDIFFSR_ERROR_HEAD_CALIBRATED_ON").startswith(
        "the training blocks of landsat8, neon, sentinel2;")
    layer = errors.ReadAsArray()
    assert np.isfinite(layer).all() and (layer > 0).all()
    # Output units: a band stretched over ~9000 DN errs by DN, not by fractions of the model's [0, 1] range.
    assert 1.0 < float(np.median(layer)) < 900.0
