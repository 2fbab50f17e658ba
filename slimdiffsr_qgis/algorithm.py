"""The Processing algorithm "Super-resolve raster" (slimdiffsr:superresolve).

Gathers parameters into the same request the dock builds and hands it to the
plugin's shared backend client, so batch mode, graphical models and
`processing.run` reuse one backend process.
"""

from __future__ import annotations

from typing import Any, Callable

from qgis.core import (QgsProcessingAlgorithm, QgsProcessingException, QgsProcessingParameterBand,
                       QgsProcessingParameterEnum, QgsProcessingParameterExtent, QgsProcessingParameterFile,
                       QgsProcessingParameterNumber, QgsProcessingParameterRasterDestination,
                       QgsProcessingParameterRasterLayer)

from .client import BackendClient, BackendError, cuda_notice
from .request_builder import LayerNotAFile, build_request, layer_file_path
from .settings import DEVICES, load_settings

SCALES = ("4", "8")

HELP = """Super-resolves a georeferenced raster by 4 or 8 with the SlimDiffSR single-step diffusion student.

<b>Input</b>: a raster file (GeoTIFF or any file GDAL reads); web services and memory layers are refused.
<b>Extent</b>: the part to process (default: the whole layer); it is snapped to the input's pixel grid.
<b>Bands</b>: the three input bands fed to the model as red, green, blue (default 1,2,3; a single-band raster uses band 1 for all three).
<b>Weights</b>: a .safetensors file; empty uses the weights shipped with the plugin. A scale the weights were not trained for is an error.
<b>Tile size</b> and <b>overlap</b> are in input pixels; smaller tiles need less memory.

The output keeps the input's CRS and data type; its pixel size is the input's divided by the scale. Its fine detail is synthesised by the model, which the output's metadata records."""


class SuperResolveAlgorithm(QgsProcessingAlgorithm):
    """slimdiffsr:superresolve; `client_source` returns the plugin's shared backend client."""

    INPUT = "INPUT"
    EXTENT = "EXTENT"
    BANDS = "BANDS"
    SCALE = "SCALE"
    WEIGHTS = "WEIGHTS"
    DEVICE = "DEVICE"
    TILE_SIZE = "TILE_SIZE"
    OVERLAP = "OVERLAP"
    OUTPUT = "OUTPUT"

    def __init__(self, client_source: Callable[[], BackendClient]) -> None:
        super().__init__()
        self._client_source = client_source

    def name(self) -> str:
        return "superresolve"

    def displayName(self) -> str:
        return "Super-resolve raster"

    def shortHelpString(self) -> str:
        return HELP

    def createInstance(self) -> "SuperResolveAlgorithm":
        return SuperResolveAlgorithm(self._client_source)

    def initAlgorithm(self, config: Any = None) -> None:
        settings = load_settings()
        self.addParameter(QgsProcessingParameterRasterLayer(self.INPUT, "Input raster"))
        self.addParameter(QgsProcessingParameterExtent(self.EXTENT, "Extent (default: whole layer)", optional=True))
        self.addParameter(QgsProcessingParameterBand(self.BANDS, "Bands fed to the model as R, G, B (default 1,2,3)",
                                                     parentLayerParameterName=self.INPUT, optional=True,
                                                     allowMultiple=True))
        scale = QgsProcessingParameterEnum(self.SCALE, "Scale factor", options=list(SCALES), defaultValue=SCALES[0])
        scale.setUsesStaticStrings(True)
        self.addParameter(scale)
        self.addParameter(QgsProcessingParameterFile(self.WEIGHTS, "Weights (.safetensors; default: shipped weights)",
                                                     extension="safetensors", optional=True,
                                                     defaultValue=settings.weights or None))
        device = QgsProcessingParameterEnum(self.DEVICE, "Device", options=list(DEVICES),
                                            defaultValue=settings.device)
        device.setUsesStaticStrings(True)
        self.addParameter(device)
        self.addParameter(QgsProcessingParameterNumber(self.TILE_SIZE, "Tile size (input pixels)",
                                                       QgsProcessingParameterNumber.Integer,
                                                       defaultValue=settings.tile, minValue=16))
        self.addParameter(QgsProcessingParameterNumber(self.OVERLAP, "Tile overlap (input pixels)",
                                                       QgsProcessingParameterNumber.Integer,
                                                       defaultValue=settings.overlap, minValue=0))
        self.addParameter(QgsProcessingParameterRasterDestination(self.OUTPUT, "Super-resolved raster"))

    def processAlgorithm(self, parameters: dict[str, Any], context: Any, feedback: Any) -> dict[str, Any]:
        layer = self.parameterAsRasterLayer(parameters, self.INPUT, context)
        try:
            input_path = layer_file_path(layer)
        except LayerNotAFile as error:
            raise QgsProcessingException(str(error)) from None
        request = build_request(
            input_path=input_path,
            output_path=self.parameterAsOutputLayer(parameters, self.OUTPUT, context),
            scale=int(self.parameterAsEnumString(parameters, self.SCALE, context)),
            extent=self.parameterAsExtent(parameters, self.EXTENT, context, layer.crs()),
            extent_crs=layer.crs(),
            bands=self.parameterAsInts(parameters, self.BANDS, context),
            weights=self.parameterAsFile(parameters, self.WEIGHTS, context) or load_settings().weights,
            device=self.parameterAsEnumString(parameters, self.DEVICE, context),
            tile=self.parameterAsInt(parameters, self.TILE_SIZE, context),
            overlap=self.parameterAsInt(parameters, self.OVERLAP, context),
            overwrite=True,
        )
        client = self._client_source()

        def progress(done: int, total: int) -> None:
            feedback.setProgress(100.0 * done / max(total, 1))

        try:
            result = client.run(request, progress=progress, is_cancelled=feedback.isCanceled)
        except BackendError as error:
            raise QgsProcessingException(f"SlimDiffSR: {error}") from None
        notice = cuda_notice(client.hello, request["device"])
        if notice:
            feedback.pushWarning(notice)
        feedback.pushInfo(f"wrote {result['output']} ({result['width']} x {result['height']} px) "
                          f"in {result['seconds']:.1f} s on {result['device']}")
        return {self.OUTPUT: result["output"]}
