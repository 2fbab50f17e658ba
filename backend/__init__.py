"""SlimDiffSR backend: model, tiled inference and GDAL raster I/O, usable without QGIS."""

__version__ = "0.1.0"
