"""The Processing provider `slimdiffsr`, holding the "Super-resolve raster" algorithm."""

from __future__ import annotations

from typing import Callable

from qgis.core import QgsProcessingProvider
from qgis.PyQt.QtGui import QIcon

from .algorithm import SuperResolveAlgorithm
from .client import BackendClient
from .icons import icon_path


class SlimDiffSRProvider(QgsProcessingProvider):
    """Registers the algorithms; `client_source` gives them the plugin's one shared backend client."""

    def __init__(self, client_source: Callable[[], BackendClient]) -> None:
        super().__init__()
        self._client_source = client_source

    def id(self) -> str:
        return "slimdiffsr"

    def name(self) -> str:
        return "SlimDiffSR"

    def longName(self) -> str:
        return "SlimDiffSR super-resolution"

    def icon(self) -> QIcon:
        return QIcon(icon_path("slimdiffsr.svg"))

    def loadAlgorithms(self) -> None:
        self.addAlgorithm(SuperResolveAlgorithm(self._client_source))

    def supportedOutputRasterLayerExtensions(self) -> list[str]:
        # The backend writes tiled, compressed GeoTIFF only.
        return ["tif"]
