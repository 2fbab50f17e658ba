"""Finish a result file and give it its input's look: overviews, renderer, a place in the project.

The expected-error layer gets a look of its own: a sequential colour ramp over its
values, which are in the output's units, so the legend reads as an error size.

Overviews are plain GDAL file work and run on the job's worker thread; renderer
and project work touch QGIS objects and run on the main thread. Band names and
colour interpretation come with the file: the backend copies them from the input.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

from osgeo import gdal
from qgis.core import (QgsColorRampShader, QgsHillshadeRenderer, QgsMultiBandColorRenderer, QgsProject,
                       QgsRasterLayer, QgsRasterRenderer, QgsSingleBandGrayRenderer, QgsSingleBandPseudoColorRenderer,
                       QgsStyle)

SMALLEST_OVERVIEW = 256
# The expected-error layer: a perceptually uniform sequential ramp, stretched over this cumulative cut.
ERROR_RAMP = "Viridis"
ERROR_CUT = (0.02, 0.98)
ERROR_CLASSES = 5
UNIFORM_MARGIN = 0.01


def overview_factors(width: int, height: int) -> list[int]:
    """Factors 2, 4, 8, ... until the coarsest overview is about SMALLEST_OVERVIEW pixels across."""
    factors = []
    factor = 2
    while max(width, height) / factor >= SMALLEST_OVERVIEW:
        factors.append(factor)
        factor *= 2
    return factors


def build_overviews(path: str) -> int:
    """Add internal overviews to the GeoTIFF at `path` unless it has some; returns how many levels it has.

    Plain GDAL file work, no QGIS object, so it runs on the task's worker thread
    and the main thread only opens a ready file.
    """
    dataset = gdal.OpenEx(path, gdal.OF_RASTER | gdal.OF_UPDATE)
    if dataset is None:
        raise OSError(f"cannot open {path} to add overviews")
    band = dataset.GetRasterBand(1)
    if band.GetOverviewCount() == 0:
        factors = overview_factors(dataset.RasterXSize, dataset.RasterYSize)
        if factors:
            dataset.BuildOverviews("AVERAGE", factors, options=["COMPRESS_OVERVIEW=DEFLATE"])
    levels = band.GetOverviewCount()
    band = None
    dataset = None
    return levels


def band_map(bands: Optional[Sequence[int]], output_bands: int) -> dict[int, int]:
    """Input band number -> output band number: output band i holds input band bands[i-1] (every band if None)."""
    chosen = list(bands) if bands else list(range(1, output_bands + 1))
    return {source: index + 1 for index, source in enumerate(chosen[:output_bands])}


def copy_renderer(renderer: Optional[QgsRasterRenderer], target: QgsRasterLayer, bands: dict[int, int]) -> bool:
    """Give `target` a copy of the input's `renderer` and stretch, band numbers mapped; False if they cannot map.

    The result is written in the input's data type and range, so the same
    min/max stretch shows both layers alike and they compare fairly.
    """
    if renderer is None:
        return False
    renderer = renderer.clone()
    used = [band for band in renderer.usesBands() if band > 0]
    if any(band not in bands for band in used):
        return False
    if isinstance(renderer, QgsMultiBandColorRenderer):
        for getter, setter in ((renderer.redBand, renderer.setRedBand), (renderer.greenBand, renderer.setGreenBand),
                               (renderer.blueBand, renderer.setBlueBand)):
            if getter() > 0:
                setter(bands[getter()])
    elif isinstance(renderer, QgsSingleBandGrayRenderer):
        renderer.setGrayBand(bands[renderer.grayBand()])
    elif isinstance(renderer, (QgsSingleBandPseudoColorRenderer, QgsHillshadeRenderer)):
        renderer.setBand(bands[renderer.band()])
    elif any(bands[band] != band for band in used):
        return False
    target.setRenderer(renderer)
    target.triggerRepaint()
    return True


def style_error_layer(layer: QgsRasterLayer) -> None:
    """Show band 1 of an expected-error layer in pseudocolour, stretched over its 2-98 % cumulative cut."""
    provider = layer.dataProvider()
    low, high = provider.cumulativeCut(1, *ERROR_CUT)
    if math.isfinite(low) and not low < high:
        # QGIS makes no ramp over an empty range: a (nearly) uniform layer gets one around its value.
        margin = max(abs(low) * UNIFORM_MARGIN, UNIFORM_MARGIN)
        low, high = low - margin, high + margin
    renderer = QgsSingleBandPseudoColorRenderer(provider, 1)
    renderer.setClassificationMin(low)
    renderer.setClassificationMax(high)
    renderer.createShader(QgsStyle.defaultStyle().colorRamp(ERROR_RAMP), QgsColorRampShader.Interpolated,
                          QgsColorRampShader.Continuous, ERROR_CLASSES)
    layer.setRenderer(renderer)
    layer.triggerRepaint()


def add_error_layer(project: QgsProject, path: str, name: str, result: QgsRasterLayer) -> QgsRasterLayer:
    """Load the expected-error GeoTIFF at `path` as `name`, styled, just under `result` in the layer tree."""
    layer = QgsRasterLayer(path, name, "gdal")
    if not layer.isValid():
        raise OSError(f"the expected-error layer {path} was written but QGIS cannot open it")
    style_error_layer(layer)
    project.addMapLayer(layer, False)
    root = project.layerTreeRoot()
    node = root.findLayer(result.id())
    parent = node.parent() if node is not None else root
    parent.insertLayer(parent.children().index(node) + 1 if node is not None else 0, layer)
    return layer


def add_result_layer(project: QgsProject, path: str, name: str, source: Optional[QgsRasterLayer],
                     bands: Optional[Sequence[int]]) -> QgsRasterLayer:
    """Load `path` as `name`, insert it just above `source` in the layer tree, and copy its look."""
    layer = QgsRasterLayer(path, name, "gdal")
    if not layer.isValid():
        raise OSError(f"the result {path} was written but QGIS cannot open it")
    if source is not None:
        copy_renderer(source.renderer(), layer, band_map(bands, layer.bandCount()))
    project.addMapLayer(layer, False)
    root = project.layerTreeRoot()
    node = root.findLayer(source.id()) if source is not None else None
    if node is not None:
        parent = node.parent()
        parent.insertLayer(parent.children().index(node), layer)
    else:
        root.insertLayer(0, layer)
    return layer
