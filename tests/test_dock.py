"""The dock panel in headless QGIS with the real backend: run over the canvas extent, cancel, refusals."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import numpy as np
import pytest
from osgeo import gdal
from qgis.core import (QgsContrastEnhancement, QgsMultiBandColorRenderer, QgsProject, QgsRasterLayer,
                       QgsRectangle, QgsSingleBandPseudoColorRenderer)

from plugin_fixtures import (backend_python, student_with_head, wait_until, write_rgb, write_tiny_shipped_like_weights,
                             write_tiny_weights)
from plugin_fixtures import one_thread_backends  # noqa: F401 (a fixture, used by name)
from rasters import ORIGIN, PIXEL
from slimdiffsr_qgis import classFactory
from slimdiffsr_qgis.contract import SUPPORTED_SCALES
from slimdiffsr_qgis.interpreter import QgisPython, find_backend_python
from slimdiffsr_qgis.job import describe_consistency
from slimdiffsr_qgis.settings import load_settings, save_settings
from slimdiffsr_qgis.plan_check import NotEnoughDisk, check_disk, describe_plan
from slimdiffsr_qgis.shipped_weights import shipped_scales

pytestmark = pytest.mark.usefixtures("one_thread_backends")
BOUND = 90.0


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
def dock(plugin, tmp_path: Path):
    panel = plugin.dock
    panel.weights_widget.setFilePath(write_tiny_weights(tmp_path / "tiny.safetensors"))
    panel.device_combo.setCurrentText("cpu")
    panel.tile_spin.setValue(16)
    panel.overlap_spin.setValue(2)
    panel.folder_widget.setFilePath(str(tmp_path / "results"))
    return panel


def add_raster(path: str, name: str) -> QgsRasterLayer:
    layer = QgsRasterLayer(path, name)
    assert layer.isValid()
    QgsProject.instance().addMapLayer(layer)
    return layer


def show_on_canvas(iface, layer: QgsRasterLayer, extent: QgsRectangle) -> None:
    canvas = iface.mapCanvas()
    canvas.resize(400, 400)
    canvas.setDestinationCrs(layer.crs())
    canvas.setLayers([layer])
    canvas.setExtent(extent)
    canvas.refresh()


def test_one_click_over_the_canvas_extent_adds_the_result_above_its_input(qgis_iface, dock, tmp_path):
    layer = add_raster(write_rgb(tmp_path / "field.tif", 160, 96), "field")
    renderer = QgsMultiBandColorRenderer(layer.dataProvider(), 3, 2, 1)
    renderer.setRedContrastEnhancement(_stretch(layer, 3))
    renderer.setGreenContrastEnhancement(_stretch(layer, 2))
    renderer.setBlueContrastEnhancement(_stretch(layer, 1))
    layer.setRenderer(renderer)
    view = QgsRectangle(ORIGIN[0] + 20 * PIXEL, ORIGIN[1] - 90 * PIXEL, ORIGIN[0] + 150 * PIXEL, ORIGIN[1] - 10 * PIXEL)
    show_on_canvas(qgis_iface, layer, view)
    shown = qgis_iface.mapCanvas().extent().intersect(layer.extent())
    dock.layer_combo.setLayer(layer)
    dock.set_extent_source("canvas")

    dock.run_button.click()
    assert dock.task is not None and not dock.run_button.isEnabled()
    assert dock.progress_bar.maximum() == 0, "a busy bar until the first tile pass"
    wait_until(lambda: dock.task is None, BOUND, "the dock's task")

    result = dock.last_layer
    assert result is not None, dock.status_label.text()
    assert result.name() == "field x4" and result.crs() == layer.crs()
    assert result.rasterUnitsPerPixelX() == pytest.approx(PIXEL / 4)
    assert abs(result.width() - shown.width() / PIXEL * 4) <= 4 and abs(result.height() - shown.height() / PIXEL * 4) <= 4
    assert QgsProject.instance().mapLayer(result.id()) is result
    order = [node.layerId() for node in QgsProject.instance().layerTreeRoot().findLayers()]
    assert order.index(result.id()) == order.index(layer.id()) - 1, "the result sits just above its input"
    copied = result.renderer()
    assert isinstance(copied, QgsMultiBandColorRenderer) and (copied.redBand(), copied.blueBand()) == (3, 1)
    assert copied.redContrastEnhancement().maximumValue() == 230
    assert Path(result.source()).parent == tmp_path / "results"
    dataset = gdal.Open(result.source())
    assert dataset.GetRasterBand(1).GetOverviewCount() >= 1
    dataset = None
    assert "Added 'field x4'" in dock.status_label.text() and "GPU" not in dock.status_label.text()
    assert dock.run_button.isEnabled() and not dock.cancel_button.isEnabled()
    assert (dock.progress_bar.maximum(), dock.progress_bar.value()) == (100, 100)


def _stretch(layer: QgsRasterLayer, band: int) -> QgsContrastEnhancement:
    enhancement = QgsContrastEnhancement(layer.dataProvider().dataType(band))
    enhancement.setMinimumValue(20)
    enhancement.setMaximumValue(230)
    enhancement.setContrastEnhancementAlgorithm(QgsContrastEnhancement.StretchToMinimumMaximum)
    return enhancement


def test_cancel_mid_run_stops_leaves_no_file_and_the_dock_works_again(qgis_iface, dock, tmp_path):
    layer = add_raster(write_rgb(tmp_path / "large.tif", 256, 192), "large")
    dock.layer_combo.setLayer(layer)
    dock.set_extent_source("layer")
    output = tmp_path / "results" / "cancelled.tif"
    dock.output_widget.setFilePath(str(output))
    percents: list[float] = []
    dock.run_button.click()
    task = dock.task
    task.progressed.connect(lambda percent, text: percent is not None and percents.append(percent))
    wait_until(lambda: len(percents) > 0 or dock.task is None, BOUND, "the first tile")
    assert percents, dock.status_label.text()
    at_cancel = percents[-1]
    dock.cancel_button.click()
    wait_until(lambda: dock.task is None, BOUND, "the cancelled task to end")

    assert percents[-1] < 100 and percents[-1] - at_cancel <= 25, f"cancel at {at_cancel} % ran to {percents[-1]} %"
    assert "Cancelled" in dock.status_label.text() and "Failed" not in dock.status_label.text()
    assert task.status() == task.Complete and task.description().endswith("cancelled"), "not QGIS's 'Task failed'"
    assert not output.exists() and list(output.parent.iterdir()) == []
    assert dock.last_layer is None and len(QgsProject.instance().mapLayers()) == 1
    assert dock.run_button.isEnabled() and not dock.cancel_button.isEnabled()

    small = add_raster(write_rgb(tmp_path / "small.tif", 32, 16), "small")
    dock.layer_combo.setLayer(small)
    dock.output_widget.setFilePath("")
    dock.run_button.click()
    wait_until(lambda: dock.task is None, BOUND, "the run after a cancel")
    assert dock.last_layer is not None and dock.last_layer.name() == "small x4"
    assert dock.client.starts == 1


def test_unloading_the_plugin_during_a_run_stops_it_without_touching_the_deleted_panel(plugin, dock, tmp_path):
    from qgis.core import QgsApplication

    layer = add_raster(write_rgb(tmp_path / "large.tif", 256, 192), "large")
    dock.layer_combo.setLayer(layer)
    dock.set_extent_source("layer")
    output = tmp_path / "results" / "unloaded.tif"
    dock.output_widget.setFilePath(str(output))
    task = dock.start()
    wait_until(lambda: task.progress() > 0, BOUND, "the run to start")
    backend = plugin.client()._process
    plugin.unload()
    wait_until(lambda: QgsApplication.taskManager().countActiveTasks() == 0, BOUND, "the task to end")
    assert backend.poll() is not None and not output.exists()


def test_estimate_shows_size_tiles_and_free_disk_without_running(qgis_iface, dock, tmp_path):
    layer = add_raster(write_rgb(tmp_path / "in.tif", 64, 32), "in")
    dock.layer_combo.setLayer(layer)
    dock.set_extent_source("layer")
    dock.estimate_button.click()
    wait_until(lambda: dock.task is None, BOUND, "the estimate")
    text = dock.status_label.text()
    assert "256 x 128 px" in text and "free on disk" in text and "iB" in text
    assert "tile(s) x 1 model pass(es)" in text and "tile passes" in text
    assert not (tmp_path / "results").exists() or list((tmp_path / "results").iterdir()) == []


def test_a_drawn_rectangle_sets_the_extent_and_the_map_tool_is_given_back(qgis_iface, dock, tmp_path):
    layer = add_raster(write_rgb(tmp_path / "in.tif", 64, 32), "in")
    show_on_canvas(qgis_iface, layer, layer.extent())
    canvas = qgis_iface.mapCanvas()
    before = canvas.mapTool()
    dock.layer_combo.setLayer(layer)
    dock.draw_button.click()
    drawing = canvas.mapTool()
    assert drawing is not None and drawing is not before
    drawing.extentChanged.emit(QgsRectangle(ORIGIN[0] + 10 * PIXEL, ORIGIN[1] - 30 * PIXEL,
                                            ORIGIN[0] + 30 * PIXEL, ORIGIN[1] - 10 * PIXEL))
    assert canvas.mapTool() is before
    assert dock.extent_combo.currentData() == "drawn"
    dock.estimate_button.click()
    wait_until(lambda: dock.task is None, BOUND, "the estimate")
    assert "80 x 80 px" in dock.status_label.text()


def test_a_web_layer_is_refused_with_a_message_and_nothing_starts(qgis_iface, dock):
    tiles = QgsRasterLayer("type=xyz&url=http://127.0.0.1:9/%7Bz%7D/%7Bx%7D/%7By%7D.png&zmax=19&zmin=0",
                           "OpenStreetMap", "wms")
    QgsProject.instance().addMapLayer(tiles)
    dock.layer_combo.setLayer(tiles)
    dock.run_button.click()
    assert dock.task is None and dock.client.starts == 0
    assert "not a file" in dock.status_label.text() and "Save it as a GeoTIFF" in dock.status_label.text()


def test_a_bad_band_index_is_shown_in_the_status_line(qgis_iface, dock, tmp_path):
    layer = add_raster(write_rgb(tmp_path / "in.tif", 32, 16), "in")
    dock.layer_combo.setLayer(layer)
    dock.set_extent_source("layer")
    dock.bands_edit.setText("1,2,7")
    dock.run_button.click()
    wait_until(lambda: dock.task is None, BOUND, "the failing task")
    assert "band 7 requested" in dock.status_label.text()
    assert dock.run_button.isEnabled()


def test_a_backend_killed_mid_run_is_reported_and_the_next_run_restarts_it(qgis_iface, dock, tmp_path):
    layer = add_raster(write_rgb(tmp_path / "large.tif", 256, 192), "large")
    dock.layer_combo.setLayer(layer)
    dock.set_extent_source("layer")
    task = dock.start()
    wait_until(lambda: task.progress() > 0, BOUND, "the run to start")
    os.kill(dock.client.pid, signal.SIGKILL)
    wait_until(lambda: dock.task is None, BOUND, "the task to notice the kill")
    assert "killed (SIGKILL)" in dock.status_label.text() and dock.run_button.isEnabled()
    assert list((tmp_path / "results").iterdir()) == [], "no partial output"
    dock.estimate_button.click()
    wait_until(lambda: dock.task is None, BOUND, "the estimate on a restarted backend")
    assert "free on disk" in dock.status_label.text() and dock.client.starts == 2


def test_a_missing_backend_interpreter_is_reported_and_set_up_is_offered(qgis_iface, dock, tmp_path):
    layer = add_raster(write_rgb(tmp_path / "in.tif", 32, 16), "in")
    dock.layer_combo.setLayer(layer)
    dock.set_extent_source("layer")
    dock.setup_box.setVisible(False)
    dock.python_widget.setFilePath(str(tmp_path / "gone" / "python"))
    try:
        dock.run_button.click()
        wait_until(lambda: dock.task is None, BOUND, "the failing task")
        assert "cannot be started" in dock.status_label.text()
        assert not dock.setup_box.isHidden(), "set-up is offered"
    finally:
        dock.python_widget.setFilePath("")


def test_a_disk_too_small_for_the_result_is_refused_before_running():
    plan = {"width": 4000, "height": 4000, "bands": 3, "dtype": "uint16", "output_bytes": 96_000_000,
            "free_bytes": 50_000_000, "tiles": 300, "seconds_estimate": None}
    with pytest.raises(NotEnoughDisk, match="needs about 128.2 MiB but .* has only 47.7 MiB free"):
        check_disk(plan, "/data/out")
    check_disk({**plan, "free_bytes": 10**12}, "/data/out")
    plan = {**plan, "passes": 2, "steps": 640}
    assert "time is measured on the first run" in describe_plan(plan)
    assert "about 1 min 15 s" in describe_plan({**plan, "seconds_estimate": 75})
    assert "300 tile(s) x 2 model pass(es): 640 tile passes" in describe_plan(plan)
    assert "about 91.6 MiB" in describe_plan(plan) and "47.7 MiB free" in describe_plan(plan)


def test_each_run_of_one_input_gets_its_own_layer_name_matching_its_file(qgis_iface, dock, tmp_path):
    layer = add_raster(write_rgb(tmp_path / "field.tif", 32, 16), "field")
    dock.layer_combo.setLayer(layer)
    dock.set_extent_source("layer")
    names, files = [], []
    for _ in range(3):
        dock.run_button.click()
        wait_until(lambda: dock.task is None, BOUND, "a run")
        assert dock.last_layer is not None, dock.status_label.text()
        names.append(dock.last_layer.name())
        files.append(Path(dock.last_layer.source()).name)
    assert names == ["field x4", "field x4 (2)", "field x4 (3)"]
    assert files == ["field_x4.tif", "field_x4_2.tif", "field_x4_3.tif"]


def test_the_result_keeps_the_input_band_names_and_colour_interpretation(qgis_iface, dock, tmp_path):
    path = write_rgb(tmp_path / "named.tif", 32, 16)
    dataset = gdal.Open(path, gdal.GA_Update)
    for index, (name, colour) in enumerate((("B4", gdal.GCI_RedBand), ("B3", gdal.GCI_GreenBand),
                                            ("B2", gdal.GCI_BlueBand)), start=1):
        band = dataset.GetRasterBand(index)
        band.SetDescription(name)
        band.SetColorInterpretation(colour)
        band = None
    dataset = None
    layer = add_raster(path, "named")
    dock.layer_combo.setLayer(layer)
    dock.set_extent_source("layer")
    dock.bands_edit.setText("3,1")
    dock.rgb_edit.setText("")
    dock.run_button.click()
    wait_until(lambda: dock.task is None, BOUND, "the run")
    result = dock.last_layer
    assert result is not None, dock.status_label.text()
    assert result.bandCount() == 2
    assert [result.bandName(band) for band in (1, 2)] == ["Band 1: B2", "Band 2: B4"]
    provider = result.dataProvider()
    assert [provider.colorInterpretationName(band) for band in (1, 2)] == ["Blue", "Red"]


def test_scales_without_shipped_weights_are_offered_only_with_a_weights_file(dock, tmp_path, monkeypatch):
    offered = lambda: [dock.scale_combo.itemData(i) for i in range(dock.scale_combo.count())]  # noqa: E731
    assert offered() == list(SUPPORTED_SCALES), "a weights file is chosen"
    dock.weights_widget.setFilePath("")
    assert offered() == list(shipped_scales())
    from slimdiffsr_qgis import dock as dock_module

    monkeypatch.setattr(dock_module, "shipped_scales", lambda: (2, 4))  # a build that ships no x8 weights
    dock.weights_widget.setFilePath(str(tmp_path / "other.safetensors"))
    dock.weights_widget.setFilePath("")
    assert offered() == [2, 4]
    dock.weights_widget.setFilePath(str(tmp_path / "tiny.safetensors"))
    assert offered() == list(SUPPORTED_SCALES)


def test_a_scale_without_shipped_weights_names_the_weights_box(qgis_iface, dock, tmp_path, monkeypatch):
    from slimdiffsr_qgis import job as job_module

    monkeypatch.setattr(job_module, "shipped_scales", lambda: (2, 4))  # a build that ships no x8 weights
    layer = add_raster(write_rgb(tmp_path / "in.tif", 32, 16), "in")
    dock.layer_combo.setLayer(layer)
    dock.set_extent_source("layer")
    dock.scale_combo.setCurrentIndex(dock.scale_combo.findData(8))
    dock.weights_widget.setFilePath("")
    dock.scale_combo.addItem("x8", 8)  # a stale choice the panel should no longer offer
    dock.scale_combo.setCurrentIndex(dock.scale_combo.count() - 1)
    dock.run_button.click()
    wait_until(lambda: dock.task is None, BOUND, "the refused run")
    text = dock.status_label.text()
    assert "no weights for x8 yet" in text and "the Weights box" in text and "--weights" not in text


def test_a_one_tile_run_shows_a_busy_bar_until_its_tile_and_counts_what_the_estimate_counted(qgis_iface, dock,
                                                                                             tmp_path):
    layer = add_raster(write_rgb(tmp_path / "one.tif", 12, 10), "one")
    dock.layer_combo.setLayer(layer)
    dock.set_extent_source("layer")
    seen: list = []
    plans: list = []
    dock.run_button.click()
    dock.task.progressed.connect(lambda percent, text: seen.append((percent, text)))
    dock.task.planned.connect(plans.append)
    wait_until(lambda: dock.task is None, BOUND, "the run")
    assert dock.last_layer is not None, dock.status_label.text()
    first_tile = next(index for index, (percent, _) in enumerate(seen) if percent is not None)
    assert first_tile > 0 and all(percent is None for percent, _ in seen[:first_tile]), "busy until the first tile"
    counted = [text for _, text in seen if text.startswith("tile pass")]
    assert plans[0]["tiles"] == 1 and counted[-1] == f"tile pass {plans[0]['steps']} of {plans[0]['steps']}"


def test_no_interpreter_found_anywhere_fails_the_run_and_the_check_and_offers_set_up(plugin, dock, tmp_path,
                                                                                    monkeypatch):
    nowhere = QgisPython(str(tmp_path / "qgis" / "bin" / "qgis"), str(tmp_path / "qgis"), (3, 11),
                         str(tmp_path / "qgis"), False)
    monkeypatch.setattr(plugin, "backend_python", lambda: find_backend_python(
        "", tmp_path / "profile", tmp_path / "plugin", nowhere))
    layer = add_raster(write_rgb(tmp_path / "in.tif", 32, 16), "in")
    dock.layer_combo.setLayer(layer)
    dock.set_extent_source("layer")
    dock.setup_box.setVisible(False)
    dock.run_button.click()
    wait_until(lambda: dock.task is None, BOUND, "the failing task")
    assert "no Python interpreter for the SlimDiffSR backend was found" in dock.status_label.text()
    assert not dock.setup_box.isHidden(), "set-up is offered"
    plugin.check_backend()
    wait_until(lambda: plugin.backend_status is not None, BOUND, "the backend check")
    assert plugin.backend_status.missing == "interpreter" and "was found" in dock.setup_label.text()


def test_changing_the_backend_python_checks_the_backend_again(plugin, dock, tmp_path):
    assert dock.setup_label.text() == "Checking the backend..." and plugin.backend_status is None
    dock.python_widget.setFilePath(str(tmp_path / "gone" / "python"))
    try:
        wait_until(lambda: plugin.backend_status is not None, BOUND, "the check of the chosen interpreter")
        assert plugin.backend_status.missing == "interpreter" and not plugin.backend_status.ready
        assert not dock.setup_box.isHidden() and "cannot run" in dock.setup_label.text()
    finally:
        plugin.backend_status = None
        dock.python_widget.setFilePath("")
    assert dock.setup_label.text() == "Checking the backend..." and not dock.setup_box.isHidden()
    wait_until(lambda: plugin.backend_status is not None, BOUND, "the check of the discovered interpreter")
    assert plugin.backend_status.ready, plugin.backend_status.message
    assert dock.setup_box.isHidden() and dock.client.is_running()


@pytest.mark.parametrize("ticked", [True, False], ids=["consistent", "plain"])
def test_the_result_line_gives_the_consistency_figures_and_the_checkbox_reaches_the_request(qgis_iface, dock,
                                                                                           tmp_path, ticked):
    dock.weights_widget.setFilePath(write_tiny_shipped_like_weights(tmp_path / "shipped_like.safetensors"))
    layer = add_raster(write_rgb(tmp_path / "in.tif", 40, 24), "in")
    dock.layer_combo.setLayer(layer)
    dock.set_extent_source("layer")
    assert dock.consistency_check.isChecked(), "on by default"
    dock.consistency_check.setChecked(ticked)
    task = dock.start()
    assert task.job.request.consistency is ticked
    wait_until(lambda: dock.task is None, BOUND, "the run")
    assert dock.last_layer is not None, dock.status_label.text()
    dataset = gdal.Open(dock.last_layer.source())
    metadata = dataset.GetMetadata()
    dataset = None
    assert metadata["SLIMDIFFSR_CONSISTENCY"] == ("back-projected to the input" if ticked else "off")
    figures = {key: value for key, value in metadata.items() if key.startswith("SLIMDIFFSR_CONSISTENCY_")}
    assert task.outcome.result["consistency"] == figures
    line = dock.status_label.text().splitlines()[-1]
    assert line == describe_consistency(figures, ticked)
    percent = f"{100 * float(figures['SLIMDIFFSR_CONSISTENCY_MAD_FRACTION']):.2f} % of the input's range"
    assert line.startswith("Consistency") and percent in line and "shift x/y" in line and "spectral angle" in line


def test_the_consistency_line_reads_the_result_figures():
    figures = {"SLIMDIFFSR_CONSISTENCY_MAD": "0.2,0.3", "SLIMDIFFSR_CONSISTENCY_MAD_FRACTION": "0.000912",
               "SLIMDIFFSR_CONSISTENCY_SHIFT": "-0.0012,0.2500"}
    assert describe_consistency(figures, True) == (
        "Consistency (back-projected to the input): output reduced to the input grid differs by 0.09 % of the "
        "input's range, shift x/y 0.00/0.25 input px.")
    angled = describe_consistency({**figures, "SLIMDIFFSR_CONSISTENCY_SPECTRAL_ANGLE": "1.234"}, False)
    assert angled.startswith("Consistency: ") and angled.endswith(", spectral angle 1.23 degrees.")
    assert "not measured" in describe_consistency({}, False)


def test_clearing_the_pytorch_field_lets_set_up_choose_again(dock):
    assert dock.torch_edit.placeholderText() == "empty: CPU build, or CUDA when ticked in set-up"
    custom = "torch==2.13.0 --index-url https://example.invalid/cu"
    try:
        dock.torch_edit.setText(custom)
        dock.torch_edit.editingFinished.emit()
        assert load_settings().torch_requirement == custom
    finally:
        dock.torch_edit.setText("")
        dock.torch_edit.editingFinished.emit()
    assert load_settings().torch_requirement == ""


def test_a_finished_set_up_names_its_interpreter_in_the_panel_and_checks_it_once(plugin, dock):
    python = backend_python()
    plugin._on_setup_done(python)  # what the set-up dialog calls when its backend answered
    assert dock.python_widget.filePath() == python and load_settings().backend_python == python
    assert dock.setup_label.text() == "Checking the backend..." and "is set up" in dock.status_label.text()
    wait_until(lambda: plugin.backend_status is not None, BOUND, "the check after set-up")
    assert plugin.backend_status.ready and plugin.backend_status.python == python
    assert dock.setup_box.isHidden() and dock.client.is_running()
    assert dock.client.starts == 1, "one check: filling in the interpreter does not start a second one"


def test_the_expected_error_layer_is_added_under_the_result_in_pseudocolour(qgis_iface, dock, tmp_path):
    (tmp_path / "head").mkdir()
    dock.weights_widget.setFilePath(student_with_head(tmp_path / "head"))
    layer = add_raster(write_rgb(tmp_path / "field.tif", 40, 24), "field")
    dock.layer_combo.setLayer(layer)
    dock.set_extent_source("layer")
    assert not dock.error_layer_check.isChecked(), "off by default: it is a second file"
    dock.error_layer_check.setChecked(True)
    task = dock.start()
    assert task.job.request.uncertainty == str(tmp_path / "results" / "field_x4_error.tif")
    wait_until(lambda: dock.task is None, BOUND, "the run")
    result, errors = dock.last_layer, dock.last_error_layer
    assert errors is not None, dock.status_label.text()
    assert errors.name() == "field x4 expected error"
    assert errors.source() == task.job.request.uncertainty
    assert (errors.width(), errors.height()) == (result.width(), result.height())
    renderer = errors.renderer()
    assert isinstance(renderer, QgsSingleBandPseudoColorRenderer) and renderer.band() == 1
    dataset = gdal.Open(errors.source())
    values = dataset.GetRasterBand(1).ReadAsArray()
    dataset = None
    # The legend reads in the output's units: a ramp stretched around the layer's own values.
    assert 0 < renderer.classificationMin() <= float(np.median(values)) <= renderer.classificationMax()
    assert renderer.classificationMin() < renderer.classificationMax()
    assert renderer.shader().rasterShaderFunction().colorRampItemList(), "a colour ramp, not an empty shader"
    order = [node.layerId() for node in QgsProject.instance().layerTreeRoot().findLayers()]
    assert order.index(errors.id()) == order.index(result.id()) + 1 < order.index(layer.id())
    assert "'field x4 expected error' under it" in dock.status_label.text()


def test_a_leftover_error_file_moves_the_next_result_to_a_new_number(qgis_iface, dock, tmp_path):
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "field_x4_error.tif").write_bytes(b"an earlier run's layer")
    layer = add_raster(write_rgb(tmp_path / "field.tif", 32, 16), "field")
    dock.layer_combo.setLayer(layer)
    dock.set_extent_source("layer")
    dock.error_layer_check.setChecked(True)
    request = dock.build_request()
    assert (Path(request.output).name, Path(request.uncertainty).name) == ("field_x4_2.tif", "field_x4_2_error.tif")


def test_weights_without_an_error_head_and_the_box_ticked_show_the_backend_message(qgis_iface, dock, tmp_path):
    layer = add_raster(write_rgb(tmp_path / "field.tif", 32, 16), "field")
    dock.layer_combo.setLayer(layer)
    dock.set_extent_source("layer")
    dock.error_layer_check.setChecked(True)
    dock.run_button.click()
    wait_until(lambda: dock.task is None, BOUND, "the refusal")
    text = dock.status_label.text()
    assert text.startswith("Failed:") and "no error head beside" in text
    assert "python -m training.stages.error_head" in text
    assert dock.last_layer is None and not list((tmp_path / "results").glob("*.tif"))
