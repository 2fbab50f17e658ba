"""slimdiffsr:superresolve through QGIS Processing: processing.run, a graphical model, a batch, failures."""

from __future__ import annotations

from pathlib import Path

import pytest
from osgeo import gdal
from qgis.core import (QgsApplication, QgsProcessingException, QgsProcessingModelAlgorithm,
                       QgsProcessingModelChildAlgorithm, QgsProcessingModelChildParameterSource,
                       QgsProcessingModelOutput, QgsProcessingModelParameter, QgsProcessingParameterRasterLayer,
                       QgsRasterLayer)

from plugin_fixtures import write_rgb, write_tiny_weights
from plugin_fixtures import one_thread_backends  # noqa: F401 (a fixture, used by name)
from rasters import ORIGIN, PIXEL
from slimdiffsr_qgis import classFactory

pytestmark = pytest.mark.usefixtures("one_thread_backends")


@pytest.fixture
def plugin(qgis_iface, qgis_processing):
    loaded = classFactory(qgis_iface)
    loaded.initGui()
    yield loaded
    loaded.unload()


@pytest.fixture
def weights(tmp_path: Path) -> str:
    return write_tiny_weights(tmp_path / "tiny_x4.safetensors")


def geometry(path: str) -> tuple[tuple[float, ...], int, int]:
    dataset = gdal.Open(path)
    result = dataset.GetGeoTransform(), dataset.RasterXSize, dataset.RasterYSize
    dataset = None
    return result


def test_processing_run_writes_the_requested_extent_at_the_pixel_size_over_scale(plugin, tmp_path, weights):
    import processing

    raster = write_rgb(tmp_path / "in.tif", 48, 32)
    xmin, ymax = ORIGIN[0] + 8 * PIXEL, ORIGIN[1] - 4 * PIXEL
    xmax, ymin = xmin + 24 * PIXEL, ymax - 16 * PIXEL
    result = processing.run("slimdiffsr:superresolve", {
        "INPUT": raster, "EXTENT": f"{xmin},{xmax},{ymin},{ymax} [EPSG:32633]", "SCALE": "4",
        "WEIGHTS": weights, "DEVICE": "cpu", "TILE_SIZE": 16, "OVERLAP": 2, "OUTPUT": str(tmp_path / "out.tif")})
    transform, width, height = geometry(result["OUTPUT"])
    assert (width, height) == (24 * 4, 16 * 4)
    assert transform[1] == pytest.approx(PIXEL / 4) and transform[5] == pytest.approx(-PIXEL / 4)
    assert (transform[0], transform[3]) == pytest.approx((xmin, ymax))
    layer = QgsRasterLayer(result["OUTPUT"], "out")
    extent = layer.extent()
    assert (extent.xMinimum(), extent.yMinimum(), extent.xMaximum(), extent.yMaximum()) == pytest.approx(
        (xmin, ymin, xmax, ymax))
    assert layer.crs().authid() == "EPSG:32633"


def test_the_algorithm_runs_inside_a_graphical_model(plugin, tmp_path, weights):
    import processing

    model = QgsProcessingModelAlgorithm("Super-resolve then measure", "tests")
    model.addModelParameter(QgsProcessingParameterRasterLayer("raster", "Raster"),
                            QgsProcessingModelParameter("raster"))
    child = QgsProcessingModelChildAlgorithm("slimdiffsr:superresolve")
    child.setChildId("sr")
    static = QgsProcessingModelChildParameterSource.fromStaticValue
    child.addParameterSources("INPUT", [QgsProcessingModelChildParameterSource.fromModelParameter("raster")])
    for name, value in (("SCALE", "4"), ("WEIGHTS", weights), ("DEVICE", "cpu"), ("TILE_SIZE", 16),
                        ("OVERLAP", 2)):
        child.addParameterSources(name, [static(value)])
    output = QgsProcessingModelOutput("upscaled")
    output.setChildId("sr")
    output.setChildOutputName("OUTPUT")
    child.setModelOutputs({"upscaled": output})
    model.addChildAlgorithm(child)
    stats = QgsProcessingModelChildAlgorithm("native:rasterlayerstatistics")
    stats.setChildId("stats")
    stats.addParameterSources("INPUT", [QgsProcessingModelChildParameterSource.fromChildOutput("sr", "OUTPUT")])
    stats.addParameterSources("BAND", [static(1)])
    model.addChildAlgorithm(stats)

    raster = write_rgb(tmp_path / "in.tif", 32, 24)
    results = processing.run(model, {"raster": raster, "sr:upscaled": str(tmp_path / "model_out.tif")})
    _, width, height = geometry(results["sr:upscaled"])
    assert (width, height) == (128, 96)
    assert Path(results["sr:upscaled"]).is_file()


def test_a_batch_of_three_inputs_starts_the_backend_once(plugin, tmp_path, weights):
    import processing

    outputs = []
    for index in range(3):
        raster = write_rgb(tmp_path / f"in{index}.tif", 32, 16, seed=index)
        outputs.append(processing.run("slimdiffsr:superresolve", {
            "INPUT": raster, "SCALE": "4", "WEIGHTS": weights, "DEVICE": "cpu", "TILE_SIZE": 16, "OVERLAP": 2,
            "OUTPUT": str(tmp_path / f"out{index}.tif") if index else "TEMPORARY_OUTPUT"})["OUTPUT"])
    assert all(Path(p).is_file() for p in outputs)
    assert Path(outputs[0]).suffix == ".tif", "a temporary output is a GeoTIFF too"
    assert plugin.client().starts == 1


def test_cancelling_the_feedback_stops_the_backend_run_and_leaves_no_output(plugin, tmp_path, weights):
    import processing
    from qgis.core import QgsProcessingFeedback

    raster = write_rgb(tmp_path / "large.tif", 256, 192)
    output = tmp_path / "cancelled.tif"
    feedback = QgsProcessingFeedback()
    feedback.progressChanged.connect(lambda percent: feedback.cancel())
    with pytest.raises(QgsProcessingException, match="cancelled"):
        processing.run("slimdiffsr:superresolve", {"INPUT": raster, "SCALE": "4", "WEIGHTS": weights,
                                                   "DEVICE": "cpu", "TILE_SIZE": 16, "OVERLAP": 2,
                                                   "OUTPUT": str(output)}, feedback=feedback)
    assert 0 < feedback.progress() < 100
    assert sorted(p.name for p in tmp_path.iterdir()) == ["large.tif", "tiny_x4.safetensors"]


def test_a_bad_band_index_fails_with_the_backend_message(plugin, tmp_path, weights):
    import processing

    raster = write_rgb(tmp_path / "in.tif", 32, 16)
    with pytest.raises(QgsProcessingException, match="band 5 requested but .* has 3 bands"):
        processing.run("slimdiffsr:superresolve", {"INPUT": raster, "BANDS": [1, 2, 5], "SCALE": "4",
                                                   "WEIGHTS": weights, "OUTPUT": str(tmp_path / "o.tif")})


def test_a_scale_the_weights_were_not_trained_for_is_a_clear_error(plugin, tmp_path, weights):
    import processing

    raster = write_rgb(tmp_path / "in.tif", 32, 16)
    with pytest.raises(QgsProcessingException, match="trained for x4, not x8"):
        processing.run("slimdiffsr:superresolve", {"INPUT": raster, "SCALE": "8", "WEIGHTS": weights,
                                                   "OUTPUT": str(tmp_path / "o.tif")})


def test_a_web_layer_is_refused_before_the_backend_is_asked(plugin, tmp_path):
    import processing

    tiles = QgsRasterLayer("type=xyz&url=http://127.0.0.1:9/%7Bz%7D/%7Bx%7D/%7By%7D.png&zmax=19&zmin=0",
                           "tiles", "wms")
    assert tiles.isValid()
    with pytest.raises(QgsProcessingException, match="not a file"):
        processing.run("slimdiffsr:superresolve", {"INPUT": tiles, "OUTPUT": str(tmp_path / "o.tif")})
    assert plugin.client().starts == 0


def test_the_provider_and_its_algorithm_are_registered_with_help(plugin):
    algorithm = QgsApplication.processingRegistry().algorithmById("slimdiffsr:superresolve")
    assert algorithm is not None and algorithm.displayName() == "Super-resolve raster"
    names = [p.name() for p in algorithm.parameterDefinitions()]
    assert names == ["INPUT", "EXTENT", "BANDS", "SCALE", "WEIGHTS", "DEVICE", "TILE_SIZE", "OVERLAP", "OUTPUT"]
    assert "synthesised" in algorithm.shortHelpString()
