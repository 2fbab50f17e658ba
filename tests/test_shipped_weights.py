"""Which scales the plugin offers without a weights file: the weights it ships, in a checkout or in its wheel."""

from __future__ import annotations

import zipfile
from pathlib import Path

import pytest

from plugin_fixtures import PLUGIN_DIR, REPO
from slimdiffsr_qgis.contract import BadInput, RunRequest
from slimdiffsr_qgis.shipped_weights import check_weights, shipped_scales


def test_a_checkout_offers_the_scales_of_its_resources_folder():
    expected = tuple(scale for scale in (2, 4, 8)
                     if (REPO / "resources" / "weights" / f"slimdiffsr_x{scale}.safetensors").is_file())
    assert shipped_scales(PLUGIN_DIR) == expected and 4 in expected


def test_an_installed_zip_offers_the_scales_inside_its_backend_wheel(tmp_path: Path):
    plugin = tmp_path / "plugins" / "slimdiffsr_qgis"
    (plugin / "wheels").mkdir(parents=True)
    with zipfile.ZipFile(plugin / "wheels" / "slimdiffsr-0.1.0-py3-none-any.whl", "w") as wheel:
        wheel.writestr("slimdiffsr_resources/weights/slimdiffsr_x4.safetensors", b"weights")
        wheel.writestr("slimdiffsr_resources/weights/README.md", b"card")
    assert shipped_scales(plugin) == (4,)
    assert shipped_scales(tmp_path / "elsewhere") == ()


def test_a_scale_without_shipped_weights_asks_for_a_file_in_the_named_control(tmp_path: Path):
    request = RunRequest(input="in.tif", output="out.tif", scale=8)
    with pytest.raises(BadInput, match=r"no weights for x8 yet \(shipped: x4\); choose a weights file in WEIGHTS"):
        check_weights(request, (4,), "WEIGHTS")
    check_weights(RunRequest(input="in.tif", output="out.tif", scale=8, weights="x8.safetensors"), (4,), "WEIGHTS")
    check_weights(RunRequest(input="in.tif", output="out.tif", scale=8, model="bicubic"), (4,), "WEIGHTS")
    check_weights(RunRequest(input="in.tif", output="out.tif", scale=4), (4,), "WEIGHTS")
