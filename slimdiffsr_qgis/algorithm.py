"""The Processing algorithm "Super-resolve raster" (slimdiffsr:superresolve).

Gathers parameters into the same request the dock builds and runs the same Job
on the plugin's shared backend client, so batch mode, graphical models and
`processing.run` reuse one backend process and one pipeline. The only
difference from the dock is where the result goes: Processing returns it, and
when it loads the layer a post-processor gives it the input's look and name.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

from qgis.core import (QgsProcessingAlgorithm, QgsProcessingContext, QgsProcessingException,
                       QgsProcessingFeedback, QgsProcessingLayerPostProcessorInterface, QgsProcessingParameterBand,
                       QgsProcessingParameterBoolean, QgsProcessingParameterEnum, QgsProcessingParameterExtent,
                       QgsProcessingParameterFile, QgsProcessingParameterNumber,
                       QgsProcessingParameterRasterDestination, QgsProcessingParameterRasterLayer, QgsRasterLayer,
                       QgsRasterRenderer)

from .client import BackendClient, BackendError
from .contract import DEFAULT_CONSISTENCY, DEVICES, SUPPORTED_SCALES, BadInput
from .job import Job
from .plan_check import describe_plan
from .request_builder import LayerNotAFile, build_request, layer_file_path, result_layer_name, result_number
from .result_layer import band_map, copy_renderer, style_error_layer
from .settings import load_settings
from .shipped_weights import shipped_scales

# How the job's messages name the algorithm's weights parameter.
WEIGHTS_CONTROL = "WEIGHTS"

# Plain text: Processing's dialog, processing.algorithmHelp and qgis_process all show it as it is.
HELP = """Super-resolves a georeferenced raster by 2, 4 or 8 with the SlimDiffSR single-step diffusion student.

INPUT: a raster file (GeoTIFF or any file GDAL reads); web services and memory layers are refused.
EXTENT: the part to process (default: the whole layer); it is snapped to the input's pixel grid.
BANDS: the input bands written to the output, in this order (default: every band).
RGB: three of those bands that go through the model together as red, green, blue (default: the bands marked red, green, blue, else 1,2,3). Every other band goes through the model on its own, one more model pass per band.
SCALE: 2, 4 or 8 (a number). Without WEIGHTS only the scales with shipped weights run ({shipped}).
WEIGHTS: a .safetensors file; empty uses the weights shipped with the plugin. A scale the weights were not trained for is an error.
DEVICE: auto, cpu or cuda (by name).
CONSISTENCY: keep the output consistent with the input: each tile is back-projected so that the output, reduced to the input's pixel grid, reproduces the input (default: on; it keeps the model's detail from shifting colours or brightness, which measured better on real imagery, but keeps the noise of noisy or compressed inputs). It costs little time. Either way the result reports, and the output's metadata records, how far the reduced output differs from the input.
TILE_SIZE and OVERLAP are in input pixels; smaller tiles need less memory.
UNCERTAINTY: optional; a GeoTIFF for the median absolute error expected of every output pixel (half of its values err by less), in the output's units, on the output's grid (one float32 band per output band), predicted by the error head shipped beside the weights; its calibration is in docs/trust.md. Weights without an error head beside them are refused when it is asked for.

The output keeps the input's CRS, data type and band names; its pixel size is the input's divided by the scale. Its fine detail is synthesised by the model, which the output's metadata records. Before running, the output size and the free disk space are checked."""


class ResultStyle(QgsProcessingLayerPostProcessorInterface):
    """Runs on the main thread once Processing has loaded the result: the input's renderer, a unique name."""

    # Processing does not own post-processors: each is kept here until it has run.
    _pending: set["ResultStyle"] = set()

    def __init__(self, renderer: Optional[QgsRasterRenderer], bands: dict[int, int], input_name: str,
                 scale: int) -> None:
        super().__init__()
        self.renderer = renderer
        self.bands = bands
        self.input_name = input_name
        self.scale = scale
        ResultStyle._pending.add(self)

    def postProcessLayer(self, layer: Any, context: QgsProcessingContext,  # noqa: N802 (QGIS hook)
                         feedback: QgsProcessingFeedback) -> None:
        ResultStyle._pending.discard(self)
        if not isinstance(layer, QgsRasterLayer):
            return
        copy_renderer(self.renderer, layer, self.bands)
        project = context.project()
        taken = {other.name() for other in project.mapLayers().values() if other is not layer} if project else set()
        layer.setName(result_layer_name(self.input_name, self.scale,
                                        result_number(self.input_name, self.scale, taken)))


class ErrorLayerStyle(QgsProcessingLayerPostProcessorInterface):
    """Runs on the main thread once Processing has loaded the expected-error layer: its pseudocolour look."""

    _pending: set["ErrorLayerStyle"] = set()

    def __init__(self) -> None:
        super().__init__()
        ErrorLayerStyle._pending.add(self)

    def postProcessLayer(self, layer: Any, context: QgsProcessingContext,  # noqa: N802 (QGIS hook)
                         feedback: QgsProcessingFeedback) -> None:
        ErrorLayerStyle._pending.discard(self)
        if isinstance(layer, QgsRasterLayer):
            style_error_layer(layer)


class SuperResolveAlgorithm(QgsProcessingAlgorithm):
    """slimdiffsr:superresolve; `client_source` returns the plugin's shared backend client."""

    INPUT = "INPUT"
    EXTENT = "EXTENT"
    BANDS = "BANDS"
    RGB = "RGB"
    SCALE = "SCALE"
    WEIGHTS = "WEIGHTS"
    DEVICE = "DEVICE"
    CONSISTENCY = "CONSISTENCY"
    TILE_SIZE = "TILE_SIZE"
    OVERLAP = "OVERLAP"
    OUTPUT = "OUTPUT"
    UNCERTAINTY = "UNCERTAINTY"

    def __init__(self, client_source: Callable[[], BackendClient]) -> None:
        super().__init__()
        self._client_source = client_source
        self._renderer: Optional[QgsRasterRenderer] = None
        self._input_name = ""

    def name(self) -> str:
        return "superresolve"

    def displayName(self) -> str:  # noqa: N802 (QGIS hook)
        return "Super-resolve raster"

    def shortHelpString(self) -> str:  # noqa: N802 (QGIS hook)
        return HELP.format(shipped=", ".join(f"x{scale}" for scale in shipped_scales()) or "none")

    def createInstance(self) -> "SuperResolveAlgorithm":  # noqa: N802 (QGIS hook)
        return SuperResolveAlgorithm(self._client_source)

    def initAlgorithm(self, config: Any = None) -> None:  # noqa: N802 (QGIS hook)
        settings = load_settings()
        self.addParameter(QgsProcessingParameterRasterLayer(self.INPUT, "Input raster"))
        self.addParameter(QgsProcessingParameterExtent(self.EXTENT, "Extent (default: whole layer)", optional=True))
        self.addParameter(QgsProcessingParameterBand(self.BANDS, "Bands written to the output (default: all)",
                                                     parentLayerParameterName=self.INPUT, optional=True,
                                                     allowMultiple=True))
        self.addParameter(QgsProcessingParameterBand(self.RGB, "Colour bands fed to the model together as R, G, B "
                                                               "(3 bands; default: automatic)",
                                                     parentLayerParameterName=self.INPUT, optional=True,
                                                     allowMultiple=True))
        scales = ", ".join(map(str, SUPPORTED_SCALES))
        self.addParameter(QgsProcessingParameterNumber(self.SCALE, f"Scale factor ({scales})",
                                                       QgsProcessingParameterNumber.Integer, defaultValue=4,
                                                       minValue=min(SUPPORTED_SCALES),
                                                       maxValue=max(SUPPORTED_SCALES)))
        self.addParameter(QgsProcessingParameterFile(self.WEIGHTS, "Weights (.safetensors; default: shipped weights)",
                                                     extension="safetensors", optional=True,
                                                     defaultValue=settings.weights or None))
        device = QgsProcessingParameterEnum(self.DEVICE, f"Device ({', '.join(DEVICES)})", options=list(DEVICES),
                                            defaultValue=settings.device)
        device.setUsesStaticStrings(True)
        self.addParameter(device)
        self.addParameter(QgsProcessingParameterBoolean(self.CONSISTENCY, "Keep consistent with the input "
                                                                          "(back-project each tile)",
                                                        defaultValue=DEFAULT_CONSISTENCY))
        self.addParameter(QgsProcessingParameterNumber(self.TILE_SIZE, "Tile size (input pixels)",
                                                       QgsProcessingParameterNumber.Integer,
                                                       defaultValue=settings.tile, minValue=16))
        self.addParameter(QgsProcessingParameterNumber(self.OVERLAP, "Tile overlap (input pixels)",
                                                       QgsProcessingParameterNumber.Integer,
                                                       defaultValue=settings.overlap, minValue=0))
        self.addParameter(QgsProcessingParameterRasterDestination(self.OUTPUT, "Super-resolved raster"))
        self.addParameter(QgsProcessingParameterRasterDestination(self.UNCERTAINTY, "Expected error layer",
                                                                  optional=True, createByDefault=False))

    def checkParameterValues(self, parameters: dict[str, Any],  # noqa: N802 (QGIS hook)
                             context: QgsProcessingContext) -> tuple[bool, str]:
        ok, message = super().checkParameterValues(parameters, context)
        if not ok:
            return ok, message
        scale = self.parameterAsInt(parameters, self.SCALE, context)
        if scale not in SUPPORTED_SCALES:
            return False, f"SCALE {scale} is not supported; use one of {', '.join(map(str, SUPPORTED_SCALES))}"
        return True, ""

    def prepareAlgorithm(self, parameters: dict[str, Any], context: QgsProcessingContext,  # noqa: N802
                         feedback: QgsProcessingFeedback) -> bool:
        """Main thread: keep a copy of the input's renderer for the result (layers belong to this thread)."""
        layer = self.parameterAsRasterLayer(parameters, self.INPUT, context)
        if layer is not None and layer.renderer() is not None:
            self._renderer = layer.renderer().clone()
            self._input_name = layer.name()
        return True

    def processAlgorithm(self, parameters: dict[str, Any], context: QgsProcessingContext,  # noqa: N802
                         feedback: QgsProcessingFeedback) -> dict[str, Any]:
        layer = self.parameterAsRasterLayer(parameters, self.INPUT, context)
        try:
            request = build_request(
                input_path=layer_file_path(layer),
                output_path=self.parameterAsOutputLayer(parameters, self.OUTPUT, context),
                scale=self.parameterAsInt(parameters, self.SCALE, context),
                extent=self.parameterAsExtent(parameters, self.EXTENT, context, layer.crs()),
                extent_crs=layer.crs(),
                bands=self.parameterAsInts(parameters, self.BANDS, context),
                rgb=self.parameterAsInts(parameters, self.RGB, context),
                weights=self.parameterAsFile(parameters, self.WEIGHTS, context) or load_settings().weights,
                device=self.parameterAsEnumString(parameters, self.DEVICE, context),
                tile=self.parameterAsInt(parameters, self.TILE_SIZE, context),
                overlap=self.parameterAsInt(parameters, self.OVERLAP, context),
                consistency=self.parameterAsBoolean(parameters, self.CONSISTENCY, context),
                uncertainty=self.parameterAsOutputLayer(parameters, self.UNCERTAINTY, context),
                # QGIS asked the user before replacing a chosen destination.
                overwrite=True,
            )
        except (LayerNotAFile, BadInput) as error:
            raise QgsProcessingException(str(error)) from None

        def progress(percent: Optional[float], text: str) -> None:
            feedback.setProgressText(text)
            if percent is not None:
                feedback.setProgress(percent)

        job = Job(self._client_source(), request, WEIGHTS_CONTROL)
        try:
            outcome = job.run(feedback.isCanceled, lambda plan: feedback.pushInfo(describe_plan(plan)), progress)
        except BackendError as error:
            if error.cancelled:
                raise QgsProcessingException("SlimDiffSR: cancelled; no output was written") from None
            raise QgsProcessingException(f"SlimDiffSR: {error}") from None
        feedback.pushInfo(f"Wrote {outcome.summary()}")
        feedback.pushInfo(outcome.consistency)
        if outcome.notice:
            feedback.pushWarning(outcome.notice)
        output = outcome.result["output"]
        if context.willLoadLayerOnCompletion(output):
            bands = band_map(request.bands, outcome.result["bands"])
            name = self._input_name or layer.name()
            context.layerToLoadOnCompletionDetails(output).setPostProcessor(
                ResultStyle(self._renderer, bands, name, request.scale))
        uncertainty = outcome.result.get("uncertainty")
        if uncertainty and context.willLoadLayerOnCompletion(uncertainty):
            context.layerToLoadOnCompletionDetails(uncertainty).setPostProcessor(ErrorLayerStyle())
        return {self.OUTPUT: output, self.UNCERTAINTY: uncertainty}
