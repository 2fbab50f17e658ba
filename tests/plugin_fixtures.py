"""Helpers for the plugin and server tests: tiny student weights, small rasters, bounded waits, the plugin zip."""

from __future__ import annotations

import subprocess
import sys
import time
import zipfile
from pathlib import Path
from typing import Callable

import numpy as np
import pytest

from rasters import smooth_image, write_raster

REPO = Path(__file__).resolve().parent.parent
VENV_PYTHON = REPO / ".venv" / "bin" / "python"
PLUGIN_DIR = REPO / "slimdiffsr_qgis"
_zip_cache: dict[str, Path] = {}


def backend_python() -> str:
    """The interpreter the tests start the real backend with: the repo's venv, else this one."""
    return str(VENV_PYTHON) if VENV_PYTHON.is_file() else sys.executable


def write_tiny_weights(path: Path, scale: int = 4) -> str:
    """A tiny SlimDiffSR student (a few hundred k parameters, random but fixed) as a safetensors file."""
    import torch

    from backend.models import StudentConfig, build, save

    torch.manual_seed(0)
    save(build(StudentConfig.tiny(scale)), path, {"normalisation": "fixed:0,255", "purpose": "tests"})
    return str(path)


def write_tiny_shipped_like_weights(path: Path, scale: int = 4) -> str:
    """A tiny student carrying the shipped x4 file's metadata (its `percentile:2,98` normalisation and provenance).

    The shipped file itself runs about 0.4 s per 512² output on this CPU, too slow for a matrix of dozens
    of cases through three entry points; a tiny student with the same metadata goes through exactly the
    same engine path (recorded normalisation, GroupNorm statistics pass, writer) in milliseconds.
    """
    import torch

    from backend.models import StudentConfig, build, read_metadata, save
    from backend.resources import default_weights_path

    shipped = read_metadata(default_weights_path(4))["meta"]
    torch.manual_seed(0)
    save(build(StudentConfig.tiny(scale)), path, {**shipped, "purpose": "tests: tiny student, shipped metadata"})
    return str(path)


def student_with_head(folder: Path, consistency: bool = True, statistic: str = "") -> str:
    """A tiny shipped-like student with a (random, fixed) error head beside it, trained-for its sha256; its
    output is the median absolute error unless `statistic` names another (backend.models.error_head)."""
    import torch

    from backend.models.error_head import (MEDIAN, OUTPUT_KEY, STATISTIC_KEY, TRAINED_ON_KEY, ErrorHead,
                                           ErrorHeadConfig, output_kind, save_head)
    from backend.models.weights import file_sha256

    weights = write_tiny_shipped_like_weights(folder / "tiny.safetensors")
    torch.manual_seed(1)
    save_head(ErrorHead(ErrorHeadConfig(scale=4, channels=8, dilations=(1, 2))), folder / "tiny.error.safetensors",
              file_sha256(weights), {OUTPUT_KEY: output_kind(consistency), STATISTIC_KEY: statistic or MEDIAN,
                                      TRAINED_ON_KEY: "landsat8,neon,sentinel2"})
    return weights


def write_rgb(path: Path, width: int = 48, height: int = 32, seed: int = 0) -> str:
    """A 3-band uint8 GeoTIFF in EPSG:32633 with 10 m pixels."""
    return write_raster(str(path), (smooth_image(3, height, width, seed=seed) * 255).astype(np.uint8))


def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    """Process Qt events until `condition()` holds; fail the test after `timeout` seconds, never hang."""
    from qgis.PyQt.QtCore import QCoreApplication

    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        QCoreApplication.processEvents()
        time.sleep(0.02)


def plugin_zip(folder: Path) -> Path:
    """The plugin zip made by scripts/build_plugin_zip.py (built once per test session)."""
    if "zip" not in _zip_cache:
        subprocess.run([backend_python(), str(REPO / "scripts" / "build_plugin_zip.py"), "--out", str(folder)],
                       check=True, cwd=REPO, timeout=300)
        _zip_cache["zip"] = next(folder.glob("slimdiffsr_qgis-*.zip"))
    return _zip_cache["zip"]


def extract_into_profile(zip_path: Path, profile: Path) -> Path:
    """Unpack the zip into `<profile>/python/plugins` as QGIS's plugin installer does; returns that folder."""
    plugins = profile / "python" / "plugins"
    plugins.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(zip_path) as archive:
        archive.extractall(plugins)
    return plugins


@pytest.fixture
def one_thread_backends(monkeypatch: pytest.MonkeyPatch) -> None:
    """Backends started by the test use one CPU thread: on a small shared machine torch's thread pool
    spins against other processes and a tiny model runs a hundred times slower."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
