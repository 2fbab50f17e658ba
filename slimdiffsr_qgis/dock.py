"""The dock panel: pick a raster, extent, scale, weights and device, then super-resolve it with one click.

The panel only gathers choices and shows outcomes: it builds the request with
the shared `build_request`, runs the shared `Job` (the one Processing runs) in a
`SuperResolveTask`, and adds the result in the task's `finished()` on the main
thread.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Optional

from qgis.core import (QgsApplication, QgsCoordinateReferenceSystem, QgsMapLayerProxyModel, QgsProject,
                       QgsRasterLayer, QgsRectangle)
from qgis.gui import QgsCollapsibleGroupBox, QgsFileWidget, QgsMapLayerComboBox, QgsMapToolExtent
from qgis.PyQt.QtCore import Qt
from qgis.PyQt.QtWidgets import (QCheckBox, QComboBox, QDockWidget, QFormLayout, QGroupBox, QHBoxLayout, QLabel,
                                 QLineEdit, QProgressBar, QPushButton, QSpinBox, QVBoxLayout, QWidget)

from .backend_check import BackendStatus
from .client import BackendClient
from .contract import (DEFAULT_CONSISTENCY, DEVICES, KIND_MISSING_DEPENDENCY, KIND_PROTOCOL, SUPPORTED_SCALES, BadInput,
                       RunRequest)
from .job import Job
from .plan_check import describe_plan
from .request_builder import (LayerNotAFile, build_request, default_output_path, error_layer_name, error_layer_path,
                              layer_file_path, parse_bands, result_layer_name, result_number)
from .result_layer import add_error_layer, add_result_layer
from .settings import PluginSettings, load_settings, save_settings
from .shipped_weights import shipped_scales
from .task import SuperResolveTask

EXTENT_CANVAS, EXTENT_LAYER, EXTENT_DRAWN = "canvas", "layer", "drawn"
EXTENT_CHOICES = ((EXTENT_CANVAS, "Current map view"), (EXTENT_LAYER, "Whole layer"),
                  (EXTENT_DRAWN, "Drawn rectangle"))
# How the job's messages name the panel's weights control.
WEIGHTS_CONTROL = "the Weights box"
# Failures that mean "there is no usable backend" (none, or an outdated one): the panel then offers set-up.
SETUP_KINDS = (KIND_MISSING_DEPENDENCY, KIND_PROTOCOL)
SETUP_EXPLAINED = ("Set-up makes a Python environment in your QGIS profile folder and installs PyTorch and the "
                   "backend into it (one time, a few minutes).")


def sentence(text: str) -> str:
    """`text` with its first letter upper-cased and the rest untouched (str.capitalize would turn MiB into mib)."""
    return text[:1].upper() + text[1:]


class SuperResolveDock(QDockWidget):
    """The SlimDiffSR panel; `open_setup` shows the first-run set-up dialog.

    check_backend(restart) checks in the background whether the backend answers
    (restart: stop the running one first, its interpreter changed) and answers
    through `show_backend_status`. The first check waits for the panel to be
    shown: a check starts the backend, and a QGIS session whose user never opens
    the panel should not carry a PyTorch process.
    """

    def __init__(self, iface: Any, client: BackendClient, open_setup: Callable[[], None],
                 check_backend: Callable[[bool], None], parent: Optional[QWidget] = None) -> None:
        super().__init__("SlimDiffSR super-resolution", parent)
        self.setObjectName("SlimDiffSRDock")
        self.iface = iface
        self.client = client
        self.task: Optional[SuperResolveTask] = None
        self.last_layer: Optional[QgsRasterLayer] = None
        self.last_error_layer: Optional[QgsRasterLayer] = None
        self._open_setup = open_setup
        self._check_backend = check_backend
        self._backend_checked = False
        self._drawn: Optional[tuple[QgsRectangle, QgsCoordinateReferenceSystem]] = None
        self._previous_tool = None
        self._input_layer_id = ""
        self._input_name = ""
        self._result_number = 1
        self._plan_line = ""
        self._restart_after_run = False
        self._extent_tool = QgsMapToolExtent(iface.mapCanvas())
        self._extent_tool.extentChanged.connect(self._on_rectangle_drawn)
        self.settings = load_settings()
        self._build()
        self.visibilityChanged.connect(self._on_visibility_changed)

    # ----- layout -----
    def _build(self) -> None:
        body = QWidget(self)
        column = QVBoxLayout(body)
        form = QFormLayout()
        self.layer_combo = QgsMapLayerComboBox(body)
        self.layer_combo.setFilters(QgsMapLayerProxyModel.RasterLayer)
        form.addRow("Raster layer", self.layer_combo)

        self.extent_combo = QComboBox(body)
        for key, label in EXTENT_CHOICES:
            self.extent_combo.addItem(label, key)
        self.draw_button = QPushButton("Draw", body)
        self.draw_button.setToolTip("Drag a rectangle on the map to super-resolve only that part")
        self.draw_button.clicked.connect(self._start_drawing)
        extent_row = QHBoxLayout()
        extent_row.addWidget(self.extent_combo, 1)
        extent_row.addWidget(self.draw_button)
        form.addRow("Extent", extent_row)

        self.scale_combo = QComboBox(body)
        self.scale_combo.setToolTip("Scales with shipped weights; choose a weights file to use another scale")
        form.addRow("Scale", self.scale_combo)

        self.bands_edit = QLineEdit(body)
        self.bands_edit.setPlaceholderText("all bands")
        self.bands_edit.setToolTip("Input bands written to the output, in this order, e.g. 4,3,2,8 (empty: all)")
        form.addRow("Bands", self.bands_edit)

        self.rgb_edit = QLineEdit(body)
        self.rgb_edit.setPlaceholderText("automatic")
        self.rgb_edit.setToolTip("Three of the written bands that go through the model together as red, green, "
                                 "blue, e.g. 4,3,2 for Sentinel-2. Empty: the bands marked red, green, blue, else "
                                 "1,2,3. Every other band goes through the model on its own (one more pass each).")
        form.addRow("Colour bands (RGB)", self.rgb_edit)

        self.weights_widget = QgsFileWidget(body)
        self.weights_widget.setFilter("Weights (*.safetensors)")
        self.weights_widget.lineEdit().setPlaceholderText("shipped default weights")
        self.weights_widget.setFilePath(self.settings.weights)
        self.weights_widget.fileChanged.connect(lambda _path: self._offer_scales())
        form.addRow("Weights", self.weights_widget)
        self._offer_scales()

        self.device_combo = QComboBox(body)
        self.device_combo.addItems(list(DEVICES))
        self.device_combo.setCurrentText(self.settings.device)
        form.addRow("Device", self.device_combo)

        self.consistency_check = QCheckBox("Keep consistent with the input", body)
        self.consistency_check.setToolTip(
            "Back-project each tile so that the result, reduced to the input's pixel grid, reproduces the input: "
            "the added detail cannot shift colours or move edges the sensor saw. It costs little time. Either way "
            "the result reports how far it differs from the input.")
        self.consistency_check.setChecked(DEFAULT_CONSISTENCY)
        form.addRow("", self.consistency_check)

        self.error_layer_check = QCheckBox("Add an expected-error layer", body)
        self.error_layer_check.setToolTip(
            "Also write <output>_error.tif and add it under the result: the median absolute error expected of "
            "every output pixel (half of its values err by less), in the output's units, predicted by a learned "
            "error head shipped beside the weights (its calibration is in docs/trust.md). It adds about a tenth "
            "(x2) to a fifth (x4) to the run's time and is a second file.")
        form.addRow("", self.error_layer_check)

        self.output_widget = QgsFileWidget(body)
        self.output_widget.setStorageMode(QgsFileWidget.SaveFile)
        self.output_widget.setFilter("GeoTIFF (*.tif)")
        self.output_widget.lineEdit().setPlaceholderText("automatic, in the output folder")
        form.addRow("Output file", self.output_widget)
        column.addLayout(form)

        buttons = QHBoxLayout()
        self.estimate_button = QPushButton("Estimate", body)
        self.estimate_button.setToolTip("Show the output size, time and disk needed, without running")
        self.run_button = QPushButton("Super-resolve", body)
        self.run_button.setDefault(True)
        self.cancel_button = QPushButton("Cancel", body)
        self.cancel_button.setEnabled(False)
        self.estimate_button.clicked.connect(lambda: self.start(plan_only=True))
        self.run_button.clicked.connect(lambda: self.start(plan_only=False))
        self.cancel_button.clicked.connect(self.cancel)
        for button in (self.estimate_button, self.run_button, self.cancel_button):
            buttons.addWidget(button)
        column.addLayout(buttons)

        self.progress_bar = QProgressBar(body)
        self._show_progress(0.0)
        column.addWidget(self.progress_bar)
        self.status_label = QLabel("Choose a raster layer and press Super-resolve.", body)
        self.status_label.setWordWrap(True)
        self.status_label.setTextInteractionFlags(Qt.TextSelectableByMouse)
        column.addWidget(self.status_label)

        self.setup_box = QGroupBox("Backend", body)
        setup_column = QVBoxLayout(self.setup_box)
        self.setup_label = QLabel("Checking the backend...", self.setup_box)
        self.setup_label.setWordWrap(True)
        self.setup_label.setTextInteractionFlags(Qt.TextSelectableByMouse)
        self.setup_button = QPushButton("Set up backend...", self.setup_box)
        self.setup_button.clicked.connect(self._open_setup)
        setup_column.addWidget(self.setup_label)
        setup_column.addWidget(self.setup_button)
        column.addWidget(self.setup_box)

        column.addWidget(self._build_settings(body))
        column.addStretch(1)
        self.setWidget(body)

    def _build_settings(self, parent: QWidget) -> QWidget:
        box = QgsCollapsibleGroupBox("Settings", parent)
        box.setCollapsed(True)
        form = QFormLayout(box)
        self.python_widget = QgsFileWidget(box)
        self.python_widget.lineEdit().setPlaceholderText("found automatically")
        self.python_widget.setFilePath(self.settings.backend_python)
        form.addRow("Backend Python", self.python_widget)
        self.folder_widget = QgsFileWidget(box)
        self.folder_widget.setStorageMode(QgsFileWidget.GetDirectory)
        self.folder_widget.lineEdit().setPlaceholderText(str(self.settings.resolved_output_folder()))
        self.folder_widget.setFilePath(self.settings.output_folder)
        form.addRow("Output folder", self.folder_widget)
        self.tile_spin = QSpinBox(box)
        self.tile_spin.setRange(16, 4096)
        self.tile_spin.setValue(self.settings.tile)
        self.tile_spin.setToolTip("Input pixels per tile; smaller tiles need less memory")
        form.addRow("Tile size", self.tile_spin)
        self.overlap_spin = QSpinBox(box)
        self.overlap_spin.setRange(0, 512)
        self.overlap_spin.setValue(self.settings.overlap)
        form.addRow("Tile overlap", self.overlap_spin)
        self.torch_edit = QLineEdit(self.settings.torch_requirement, box)
        self.torch_edit.setPlaceholderText("empty: CPU build, or CUDA when ticked in set-up")
        self.torch_edit.setToolTip("What set-up asks pip for instead of its own choice, e.g. "
                                   "torch==2.13.0 --index-url <a CUDA build index>")
        form.addRow("PyTorch for set-up", self.torch_edit)
        self.python_widget.fileChanged.connect(self._on_backend_python_changed)
        self.folder_widget.fileChanged.connect(lambda _path: self.save_choices())
        self.tile_spin.valueChanged.connect(lambda _value: self.save_choices())
        self.overlap_spin.valueChanged.connect(lambda _value: self.save_choices())
        self.torch_edit.editingFinished.connect(self.save_choices)
        return box

    # ----- choices -----
    def _offer_scales(self) -> None:
        """Offer the scales with shipped weights, or every supported scale once a weights file is chosen."""
        chosen = self.scale_combo.currentData()
        scales = SUPPORTED_SCALES if self.weights_widget.filePath().strip() else shipped_scales()
        self.scale_combo.clear()
        for scale in scales:
            self.scale_combo.addItem(f"x{scale}", scale)
        index = self.scale_combo.findData(chosen if chosen in scales else 4)
        self.scale_combo.setCurrentIndex(max(index, 0))

    def current_settings(self) -> PluginSettings:
        """The settings as the panel shows them now."""
        return PluginSettings(
            backend_python=self.python_widget.filePath().strip(),
            weights=self.weights_widget.filePath().strip(),
            device=self.device_combo.currentText(),
            tile=self.tile_spin.value(),
            overlap=self.overlap_spin.value(),
            output_folder=self.folder_widget.filePath().strip(),
            torch_requirement=self.torch_edit.text().strip(),
        )

    def save_choices(self) -> None:
        """Persist the panel's settings so the next session (and Processing defaults) start from them."""
        self.settings = self.current_settings()
        save_settings(self.settings)

    def _on_backend_python_changed(self, _path: str) -> None:
        self.save_choices()
        # The backend restarts with the newly chosen interpreter, and the check says whether it answers;
        # a run in progress finishes on the old one first.
        if self.task is None:
            self._check_backend(True)
        else:
            self._restart_after_run = True

    def _on_visibility_changed(self, visible: bool) -> None:
        if visible and not self._backend_checked:
            self._backend_checked = True
            self._check_backend(False)

    # ----- the backend -----
    def show_backend_checking(self) -> None:
        """The Backend box says a check is under way (until `show_backend_status` has the answer)."""
        self.setup_label.setText("Checking the backend...")
        self.setup_box.setVisible(True)

    def show_backend_status(self, status: BackendStatus) -> None:
        """A backend that answers hides the Backend box; otherwise the box says what is missing and offers set-up."""
        self.setup_box.setVisible(not status.ready)
        if not status.ready:
            self.setup_label.setText(f"{status.message}\n\n{SETUP_EXPLAINED}")

    def set_extent_source(self, key: str) -> None:
        """Select canvas / layer / drawn by key."""
        self.extent_combo.setCurrentIndex(self.extent_combo.findData(key))

    def _start_drawing(self) -> None:
        canvas = self.iface.mapCanvas()
        self._previous_tool = canvas.mapTool()
        canvas.setMapTool(self._extent_tool)
        self.status_label.setText("Drag a rectangle on the map.")

    def _on_rectangle_drawn(self, rectangle: QgsRectangle) -> None:
        canvas = self.iface.mapCanvas()
        self._drawn = (QgsRectangle(rectangle), canvas.mapSettings().destinationCrs())
        self._extent_tool.clearRubberBand()
        if self._previous_tool is not None:
            canvas.setMapTool(self._previous_tool)
        else:
            canvas.unsetMapTool(self._extent_tool)
        self.set_extent_source(EXTENT_DRAWN)
        self.status_label.setText(f"Rectangle drawn: {rectangle.width():.6g} x {rectangle.height():.6g} map units.")

    def _extent(self) -> tuple[Optional[QgsRectangle], Optional[QgsCoordinateReferenceSystem]]:
        source = self.extent_combo.currentData()
        if source == EXTENT_CANVAS:
            canvas = self.iface.mapCanvas()
            return canvas.extent(), canvas.mapSettings().destinationCrs()
        if source == EXTENT_DRAWN:
            if self._drawn is None:
                raise ValueError("no rectangle is drawn yet: press Draw and drag a rectangle on the map")
            return self._drawn
        return None, None

    def build_request(self) -> RunRequest:
        """The request for the current choices; raises LayerNotAFile, BadInput or ValueError with a message to show.

        Also picks the result's number, so `<input> x4 (2)` is the layer of `<input>_x4_2.tif`.
        """
        layer = self.layer_combo.currentLayer()
        if layer is None:
            raise ValueError("choose a raster layer first")
        input_path = layer_file_path(layer)
        if self.scale_combo.currentData() is None:
            raise ValueError(f"no weights are shipped with this plugin; choose a weights file in {WEIGHTS_CONTROL}")
        scale = int(self.scale_combo.currentData())
        settings = self.current_settings()
        taken = {other.name() for other in QgsProject.instance().mapLayers().values()}
        output = self.output_widget.filePath().strip()
        with_error_layer = self.error_layer_check.isChecked()
        if not output:
            folder = settings.resolved_output_folder()
            self._result_number = result_number(layer.name(), scale, taken, folder, with_error_layer=with_error_layer)
            folder.mkdir(parents=True, exist_ok=True)
            output = str(default_output_path(folder, layer.name(), scale, self._result_number))
        else:
            self._result_number = result_number(layer.name(), scale, taken)
            if not output.lower().endswith((".tif", ".tiff")):
                output += ".tif"
            Path(output).parent.mkdir(parents=True, exist_ok=True)
        extent, extent_crs = self._extent()
        return build_request(input_path=input_path, output_path=output, scale=scale, extent=extent,
                             extent_crs=extent_crs, bands=parse_bands(self.bands_edit.text()),
                             rgb=parse_bands(self.rgb_edit.text(), "colour bands (RGB)"),
                             weights=settings.weights, device=settings.device, tile=settings.tile,
                             overlap=settings.overlap, consistency=self.consistency_check.isChecked(),
                             uncertainty=error_layer_path(output) if with_error_layer else None)

    # ----- running -----
    def start(self, plan_only: bool = False) -> Optional[SuperResolveTask]:
        """Start a run (or just the estimate) in the background; returns the task, or None if refused."""
        if self.task is not None:
            return None
        try:
            request = self.build_request()
        except (LayerNotAFile, BadInput, ValueError, OSError) as error:
            self.show_status(f"Cannot start: {error}", error=True)
            return None
        self.save_choices()
        self.last_layer = self.last_error_layer = None
        layer = self.layer_combo.currentLayer()
        self._input_layer_id, self._input_name = layer.id(), layer.name()
        job = Job(self.client, request, WEIGHTS_CONTROL, plan_only=plan_only)
        self.task = SuperResolveTask(job, self._on_finished)
        self.task.planned.connect(self._on_planned)
        self.task.progressed.connect(self._on_progress)
        self._set_running(True)
        self._plan_line = ""
        self._on_progress(None, "Estimating..." if plan_only else "Starting...")
        QgsApplication.taskManager().addTask(self.task)
        return self.task

    def cancel(self) -> None:
        """Ask the running task to stop; the backend stops between tiles and removes its partial output."""
        if self.task is not None:
            self.show_status("Cancelling...")
            self.task.cancel()

    def _set_running(self, running: bool) -> None:
        self.run_button.setEnabled(not running)
        self.estimate_button.setEnabled(not running)
        self.cancel_button.setEnabled(running)

    def _show_progress(self, percent: Optional[float]) -> None:
        """A fraction on the bar, or a busy bar (percent None) while the backend starts and loads."""
        if percent is None:
            self.progress_bar.setRange(0, 0)
        else:
            self.progress_bar.setRange(0, 100)
            self.progress_bar.setValue(int(percent))

    def _on_planned(self, plan: dict[str, Any]) -> None:
        self._plan_line = sentence(describe_plan(plan))
        self.show_status(self._plan_line)

    def _on_progress(self, percent: Optional[float], text: str) -> None:
        """The progress line, with the estimate under it so the run is read against what was announced."""
        self._show_progress(percent)
        self.show_status(sentence(text) + (f"\n{self._plan_line}" if self._plan_line else ""))

    def _on_finished(self, task: SuperResolveTask) -> None:
        self.task = None
        self._set_running(False)
        if self._restart_after_run:
            self._restart_after_run = False
            self._check_backend(True)
        error = task.error
        if error is None and task.outcome is not None:
            self._show_progress(100.0 if task.outcome.result is not None else 0.0)
            if task.outcome.result is not None:
                self._add_result(task)
            return
        self._show_progress(0.0)
        if error is None or error.cancelled:
            self.show_status("Cancelled; no output was written.")
            return
        self.show_status(f"Failed: {error}", error=True)
        if error.kind in SETUP_KINDS:
            self.setup_label.setText(f"No usable SlimDiffSR backend (see the message above).\n\n{SETUP_EXPLAINED}")
            self.setup_box.setVisible(True)

    def _add_result(self, task: SuperResolveTask) -> None:
        outcome = task.outcome
        project = QgsProject.instance()
        source = project.mapLayer(self._input_layer_id)
        taken = {layer.name() for layer in project.mapLayers().values()}
        scale = task.job.request.scale
        name = result_layer_name(self._input_name, scale,
                                 result_number(self._input_name, scale, taken, start=self._result_number))
        added = f"'{name}'"
        try:
            self.last_layer = add_result_layer(project, outcome.result["output"], name, source,
                                               task.job.request.bands)
            if outcome.result.get("uncertainty"):
                self.last_error_layer = add_error_layer(project, outcome.result["uncertainty"],
                                                        error_layer_name(name), self.last_layer)
                added += f" and '{self.last_error_layer.name()}' under it"
        except OSError as error:
            self.show_status(f"Failed: {error}", error=True)
            return
        notice = f" {outcome.notice}" if outcome.notice else ""
        self.show_status(f"Added {added}: {outcome.summary()}{notice}\n{outcome.consistency}")

    def show_status(self, text: str, error: bool = False) -> None:
        """Show one status line (red for errors)."""
        self.status_label.setStyleSheet("color: #b00020;" if error else "")
        self.status_label.setText(text)

    def shutdown(self) -> None:
        """Stop any running task and release the map tool before the plugin unloads."""
        if self.task is not None:
            # The panel is about to be deleted: the task must not report back to it.
            self.task.on_finished = lambda task: None
            self.task.cancel()
        canvas = self.iface.mapCanvas()
        if canvas.mapTool() is self._extent_tool:
            canvas.unsetMapTool(self._extent_tool)

