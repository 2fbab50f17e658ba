"""Shared fixtures: small real GeoTIFFs and simple deterministic SR models."""

from __future__ import annotations

import os
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(__file__))

from rasters import smooth_image, write_raster  # noqa: E402


@pytest.fixture
def rgb_uint16(tmp_path) -> str:
    """A 3-band uint16 EPSG:32633 raster, 120 x 90 px, values up to 10000 (Sentinel-2-like)."""
    values = (smooth_image(3, 90, 120) * 10000).astype(np.uint16)
    return write_raster(str(tmp_path / "rgb_uint16.tif"), values)


@pytest.fixture
def rgb_uint8(tmp_path) -> str:
    """A 3-band uint8 EPSG:32633 raster, 80 x 64 px."""
    values = (smooth_image(3, 64, 80, seed=1) * 255).astype(np.uint8)
    return write_raster(str(tmp_path / "rgb_uint8.tif"), values)


@pytest.fixture(scope="session", autouse=True)
def fresh_plugin_settings(qgis_app):
    """Start every test session with the plugin's QGIS settings at their defaults.

    pytest-qgis keeps one settings folder (.qgis-settings) across sessions, so a weights path or device a
    dock test stored would otherwise be the next session's default in Processing.
    """
    from qgis.core import QgsSettings

    QgsSettings().remove("slimdiffsr")
    yield

