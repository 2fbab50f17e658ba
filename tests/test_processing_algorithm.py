"""slimdiffsr:superresolve through QGIS Processing: processing.run, qgis_process, a graphical model, a batch,
the dock's twin result, failures, and every input kind users bring."""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
from pathlib import Path

import pytest
from osgeo import gdal
from qgis.core import (QgsApplication, QgsContrastEnhancement, QgsMultiBandColorRenderer, QgsProcessingException,
                       QgsProcessingFeedback, QgsProcessingModelAlgorithm, QgsProcessingModelChildAlgorithm,
                       QgsProcessingModelChildParameterSource, QgsProcessingModelOutput,
                       QgsProcessingModelParameter, QgsProcessingParameterRasterLayer, QgsProject, QgsRasterLayer)

from plugin_fixtures import (REPO, student_with_head, wait_until, write_rgb, write_tiny_shipped_like_weights,
                             write_tiny_weights)
from plugin_fixtures import one_thread_backends  # noqa: F401 (a fixture, used by name)
from rasters import ORIGIN, PIXEL
from slimdiffsr_qgis import classFactory
from slimdiffsr_qgis.settings import load_settings, save_settings

pytestmark = pytest.mark.usefixtures("one_thread_backends")
QGIS_PROCESS = Path("/usr/bin/qgis_process.bin")  # Debian's qgis_process wrapper adds a flag QGIS 3.22 rejects
BOUND = 90.0


class RecordingFeedback(QgsProcessingFeedback):
    """Keeps the messages and warnings an algorithm pushes, to check what a run shows."""

    def __init__(self) -> None:
        super().__init__()
        self.infos: list[str] = []
        self.warnings: list[str] = []

    def pushInfo(self, info: str) -> None:  # noqa: N802 (QGIS hook)
        self.infos.append(info)
        super().pushInfo(info)

    def pushWarning(self, warning: str) -> None:  # noqa: N802 (QGIS hook)
        self.warnings.append(warning)
        super().pushWarning(warning)


@pytest.fixture
def plugin(qgis_iface, qgis_processing):
    """The plugin loaded for one test; the settings its panel saves are put back after it, so a weights file
    chosen in one test is not another test's default."""
    QgsProject.instance().removeAllMapLayers()
    settings = load_settings()
    loaded = classFactory(qgis_iface)
    loaded.initGui()
    yield loaded
    loaded.unload()
    save_settings(settings)
    QgsProject.instance().removeAllMapLayers()


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
        "INPUT": raster, "EXTENT": f"{xmin},{xmax},{ymin},{ymax} [EPSG:32633]", "SCALE": 4,
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
        processing.run("slimdiffsr:superresolve", {"INPUT": raster, "BANDS": [1, 2, 5], "SCALE": 4,
                                                   "WEIGHTS": weights, "OUTPUT": str(tmp_path / "o.tif")})


def test_a_scale_the_weights_were_not_trained_for_is_a_clear_error(plugin, tmp_path, weights):
    import processing

    raster = write_rgb(tmp_path / "in.tif", 32, 16)
    with pytest.raises(QgsProcessingException, match="trained for x4, not x8"):
        processing.run("slimdiffsr:superresolve", {"INPUT": raster, "SCALE": 8, "WEIGHTS": weights,
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
    assert names == ["INPUT", "EXTENT", "BANDS", "RGB", "SCALE", "WEIGHTS", "DEVICE", "CONSISTENCY", "TILE_SIZE",
                     "OVERLAP", "OUTPUT", "UNCERTAINTY"]
    assert algorithm.parameterDefinition("CONSISTENCY").defaultValue() is True, "on by default, as in the dock and the CLI"
    uncertainty = algorithm.parameterDefinition("UNCERTAINTY")
    assert uncertainty.description() == "Expected error layer"
    assert uncertainty.flags() & uncertainty.FlagOptional and not uncertainty.createByDefault(), "a second file: off"
    assert "synthesised" in algorithm.shortHelpString() and "CONSISTENCY: " in algorithm.shortHelpString()
    assert "UNCERTAINTY: " in algorithm.shortHelpString()


def test_the_help_is_plain_text_and_says_how_to_give_the_scale(plugin):
    import processing

    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        processing.algorithmHelp("slimdiffsr:superresolve")
    text = printed.getvalue()
    assert "<b>" not in text and "0: 4" not in text
    assert "SCALE: Scale factor (2, 4, 8)" in text and "SCALE: 2, 4 or 8 (a number)" in text
    from slimdiffsr_qgis.shipped_weights import shipped_scales

    assert f"shipped weights run ({', '.join(f'x{scale}' for scale in shipped_scales())})" in text


@pytest.mark.parametrize("scale", [4, "4"], ids=["int", "text"])
def test_scale_is_a_number_given_as_an_integer_or_as_text(plugin, tmp_path, weights, scale):
    import processing

    raster = write_rgb(tmp_path / "in.tif", 16, 12)
    result = processing.run("slimdiffsr:superresolve", {
        "INPUT": raster, "SCALE": scale, "WEIGHTS": weights, "DEVICE": "cpu", "TILE_SIZE": 16, "OVERLAP": 2,
        "OUTPUT": str(tmp_path / "out.tif")})
    assert geometry(result["OUTPUT"])[1:] == (64, 48)


def test_x8_runs_with_x8_weights_and_without_them_names_the_weights_parameter(plugin, tmp_path, monkeypatch):
    import processing

    from slimdiffsr_qgis import job as job_module

    monkeypatch.setattr(job_module, "shipped_scales", lambda: (2, 4))  # a build that ships no x8 weights

    raster = write_rgb(tmp_path / "in.tif", 16, 12)
    weights8 = write_tiny_weights(tmp_path / "tiny_x8.safetensors", 8)
    result = processing.run("slimdiffsr:superresolve", {
        "INPUT": raster, "SCALE": 8, "WEIGHTS": weights8, "DEVICE": "cpu", "TILE_SIZE": 16, "OVERLAP": 2,
        "OUTPUT": str(tmp_path / "out8.tif")})
    assert geometry(result["OUTPUT"])[1:] == (128, 96)
    with pytest.raises(QgsProcessingException, match="no weights for x8 yet .*choose a weights file in WEIGHTS"):
        processing.run("slimdiffsr:superresolve", {"INPUT": raster, "SCALE": 8, "WEIGHTS": "",
                                                   "OUTPUT": str(tmp_path / "out2.tif")})
    with pytest.raises(QgsProcessingException, match="SCALE 3 is not supported"):
        processing.run("slimdiffsr:superresolve", {"INPUT": raster, "SCALE": 3, "WEIGHTS": weights8,
                                                   "OUTPUT": str(tmp_path / "out3.tif")})
    assert not (tmp_path / "out2.tif").exists() and not (tmp_path / "out3.tif").exists()


def test_device_auto_without_a_gpu_pushes_no_gpu_warning(plugin, tmp_path, weights):
    import processing

    if plugin.client().start()["environment"]["cuda"]:
        pytest.skip("this machine has a usable GPU")
    feedback = RecordingFeedback()
    processing.run("slimdiffsr:superresolve", {
        "INPUT": write_rgb(tmp_path / "in.tif", 16, 12), "SCALE": 4, "WEIGHTS": weights, "DEVICE": "auto",
        "TILE_SIZE": 16, "OVERLAP": 2, "OUTPUT": str(tmp_path / "out.tif")}, feedback=feedback)
    assert feedback.warnings == []


def styled_layer(path: str, name: str) -> QgsRasterLayer:
    """A project layer showing bands 3,2,1 with a 20..230 stretch: a look the result must inherit."""
    layer = QgsRasterLayer(path, name)
    renderer = QgsMultiBandColorRenderer(layer.dataProvider(), 3, 2, 1)
    for setter, band in ((renderer.setRedContrastEnhancement, 3), (renderer.setGreenContrastEnhancement, 2),
                         (renderer.setBlueContrastEnhancement, 1)):
        enhancement = QgsContrastEnhancement(layer.dataProvider().dataType(band))
        enhancement.setMinimumValue(20)
        enhancement.setMaximumValue(230)
        enhancement.setContrastEnhancementAlgorithm(QgsContrastEnhancement.StretchToMinimumMaximum)
        setter(enhancement)
    layer.setRenderer(renderer)
    QgsProject.instance().addMapLayer(layer)
    return layer


def look(layer: QgsRasterLayer) -> tuple:
    renderer = layer.renderer()
    provider = layer.dataProvider()
    return (renderer.type(), renderer.usesBands(), renderer.redContrastEnhancement().maximumValue(),
            [(layer.bandName(band), provider.colorInterpretationName(band)) for band in range(1, layer.bandCount() + 1)])


def test_the_dock_and_processing_make_the_same_file_with_the_same_look(plugin, tmp_path, weights):
    import processing

    layer = styled_layer(write_rgb(tmp_path / "field.tif", 40, 24), "field")
    dock = plugin.dock
    dock.weights_widget.setFilePath(weights)
    dock.device_combo.setCurrentText("cpu")
    dock.tile_spin.setValue(16)
    dock.overlap_spin.setValue(2)
    dock.folder_widget.setFilePath(str(tmp_path / "dock"))
    dock.layer_combo.setLayer(layer)
    dock.set_extent_source("layer")
    dock.run_button.click()
    wait_until(lambda: dock.task is None, BOUND, "the dock's run")
    from_dock = dock.last_layer
    assert from_dock is not None, dock.status_label.text()

    results = processing.runAndLoadResults("slimdiffsr:superresolve", {
        "INPUT": layer, "SCALE": 4, "WEIGHTS": weights, "DEVICE": "cpu", "TILE_SIZE": 16, "OVERLAP": 2,
        "OUTPUT": str(tmp_path / "processing.tif")})
    (from_processing,) = [other for other in QgsProject.instance().mapLayers().values()
                          if other.source() == results["OUTPUT"]]

    assert read_pixels(from_dock.source()) == read_pixels(from_processing.source())
    assert look(from_processing) == look(from_dock) == (
        "multibandcolor", [3, 2, 1], 230, [("Band 1", "Red"), ("Band 2", "Green"), ("Band 3", "Blue")])
    assert (from_dock.name(), from_processing.name()) == ("field x4", "field x4 (2)")
    assert overview_count(from_dock.source()) == overview_count(from_processing.source())


def overview_count(path: str) -> int:
    dataset = gdal.Open(path)
    count = dataset.GetRasterBand(1).GetOverviewCount()
    dataset = None
    return count


def read_pixels(path: str) -> tuple:
    """Everything of a raster but its file name: pixels, georeferencing, band labels and metadata."""
    dataset = gdal.Open(path)
    bands = [dataset.GetRasterBand(b) for b in range(1, dataset.RasterCount + 1)]
    metadata = {k: v for k, v in dataset.GetMetadata().items()}
    pixels = (dataset.ReadAsArray().tobytes(), dataset.GetGeoTransform(), dataset.GetProjection(),
              [(band.GetDescription(), band.GetColorInterpretation(), band.DataType) for band in bands], metadata)
    bands = dataset = None
    return pixels


def test_qgis_process_in_a_fresh_profile_lists_helps_and_runs_it(tmp_path, weights):
    if not QGIS_PROCESS.is_file():
        pytest.skip(f"{QGIS_PROCESS} is not installed (Debian package qgis)")
    environment = {**os.environ, "QT_QPA_PLATFORM": "offscreen", "QGIS_CUSTOM_CONFIG_PATH": str(tmp_path / "profile"),
                   "QGIS_PLUGINPATH": str(REPO), "OMP_NUM_THREADS": "1"}

    def qgis_process(*arguments: str) -> str:
        done = subprocess.run([str(QGIS_PROCESS), *arguments], capture_output=True, text=True, env=environment,
                              timeout=300)
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
        return done.stdout

    qgis_process("plugins", "enable", "slimdiffsr_qgis")
    helped = qgis_process("help", "slimdiffsr:superresolve")
    assert "SCALE: Scale factor (2, 4, 8)" in helped and "<b>" not in helped
    raster = write_rgb(tmp_path / "in.tif", 16, 12)
    output = tmp_path / "out.tif"
    qgis_process("run", "slimdiffsr:superresolve", "--", f"INPUT={raster}", "SCALE=4", f"WEIGHTS={weights}",
                 "DEVICE=cpu", "TILE_SIZE=16", "OVERLAP=2", f"OUTPUT={output}")
    assert geometry(str(output))[1:] == (64, 48)


def test_every_input_kind_comes_out_whole_through_processing_run(plugin, tmp_path):
    import processing

    from input_cases import assert_only, check_output, input_cases, write_cases

    weights = write_tiny_shipped_like_weights(tmp_path / "tiny_shipped_x4.safetensors")
    inputs = write_cases(tmp_path / "inputs")
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    for case in input_cases():
        output = out_dir / f"{case.name}_x4.tif"
        processing.run("slimdiffsr:superresolve", {"INPUT": inputs[case.name], "SCALE": 4, "WEIGHTS": weights,
                                                   "DEVICE": "cpu", "TILE_SIZE": 32, "OVERLAP": 8,
                                                   "OUTPUT": str(output)})
        check_output(inputs[case.name], str(output))
    assert_only(out_dir, [f"{case.name}_x4.tif" for case in input_cases()])


@pytest.mark.parametrize("consistency", [True, False], ids=["consistent", "plain"])
def test_consistency_reaches_the_request_and_the_log_gives_the_figures(plugin, tmp_path, consistency):
    import processing

    from slimdiffsr_qgis.job import describe_consistency

    weights = write_tiny_shipped_like_weights(tmp_path / "tiny_shipped_x4.safetensors")
    feedback = RecordingFeedback()
    parameters = {"INPUT": write_rgb(tmp_path / "in.tif", 40, 24), "SCALE": 4, "WEIGHTS": weights, "DEVICE": "cpu",
                  "TILE_SIZE": 16, "OVERLAP": 2, "OUTPUT": str(tmp_path / "out.tif")}
    if not consistency:
        parameters["CONSISTENCY"] = False
    result = processing.run("slimdiffsr:superresolve", parameters, feedback=feedback)
    dataset = gdal.Open(result["OUTPUT"])
    metadata = dataset.GetMetadata()
    dataset = None
    assert metadata["SLIMDIFFSR_CONSISTENCY"] == ("back-projected to the input" if consistency else "off")
    figures = {key: value for key, value in metadata.items() if key.startswith("SLIMDIFFSR_CONSISTENCY_")}
    assert "SLIMDIFFSR_CONSISTENCY_MAD_FRACTION" in figures and "SLIMDIFFSR_CONSISTENCY_SHIFT" in figures
    line = describe_consistency(figures, consistency)
    assert line in feedback.infos and "differs by" in line


@pytest.mark.parametrize("asked", [True, False], ids=["with-layer", "without"])
def test_uncertainty_writes_the_expected_error_on_the_outputs_grid_only_when_asked(plugin, tmp_path, asked):
    import processing

    (tmp_path / "head").mkdir()
    parameters = {"INPUT": write_rgb(tmp_path / "in.tif", 40, 24), "SCALE": 4,
                  "WEIGHTS": student_with_head(tmp_path / "head"), "DEVICE": "cpu", "TILE_SIZE": 16, "OVERLAP": 2,
                  "OUTPUT": str(tmp_path / "out.tif")}
    if asked:
        parameters["UNCERTAINTY"] = str(tmp_path / "out_error.tif")
    feedback = RecordingFeedback()
    result = processing.run("slimdiffsr:superresolve", parameters, feedback=feedback)
    written = sorted(path.name for path in tmp_path.glob("*.tif"))
    if not asked:
        assert not result.get("UNCERTAINTY") and written == ["in.tif", "out.tif"]
        return
    assert result["UNCERTAINTY"] == str(tmp_path / "out_error.tif")
    assert written == ["in.tif", "out.tif", "out_error.tif"]
    output, errors = gdal.Open(result["OUTPUT"]), gdal.Open(result["UNCERTAINTY"])
    assert (errors.RasterXSize, errors.RasterYSize, errors.RasterCount) == (
        output.RasterXSize, output.RasterYSize, output.RasterCount)
    assert errors.GetGeoTransform() == output.GetGeoTransform()
    assert errors.GetProjection() == output.GetProjection()
    output = errors = None
    assert any(f"expected error as {result['UNCERTAINTY']}" in info for info in feedback.infos)
