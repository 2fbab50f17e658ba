"""The leave-one-family-out table: each family scored only by a model that states it never trained on it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from backend.models import StudentConfig, build, save
from benchmarks import held_out
from rasters import smooth_image, write_raster

torch.set_num_threads(1)


def _manifest(folder: Path) -> Path:
    blocks = {"train": [], "validation": [], "test": [[0, 0, 192, 192]]}
    scenes = []
    for index, sensor in enumerate(("sentinel2", "neon")):
        values = (smooth_image(3, 192, 192, seed=index) * 4000 + 100).astype(np.uint16)
        write_raster(str(folder / f"{sensor}.tif"), values, nodata=0)
        scenes.append({"name": sensor, "file": f"{sensor}.tif", "sensor": sensor, "nodata": 0, "blocks": blocks})
    manifest = folder / "manifest.json"
    manifest.write_text(json.dumps({"scenes": scenes}))
    return manifest


def _student(path: Path, meta: dict[str, str]) -> Path:
    torch.manual_seed(0)
    path.parent.mkdir(parents=True, exist_ok=True)
    save(build(StudentConfig.tiny(4)), path, meta)
    return path


def test_each_family_is_scored_by_its_left_out_model_beside_lanczos_and_a_file_that_saw_it(tmp_path):
    manifest = _manifest(tmp_path)
    for family in ("sentinel2", "neon"):
        _student(tmp_path / "runs" / f"without_{family}" / held_out.PRODUCT, {"excluded_sensors": family})
    compare = _student(tmp_path / "all.safetensors", {})
    same_recipe = _student(tmp_path / "same_recipe.safetensors", {})
    card = tmp_path / "README.md"
    card.write_text("before\n" + "\n".join(held_out.card_markers(4)) + "\nafter\n")
    held_out.main(["--runs", str(tmp_path / "runs"), "--data", str(manifest), "--role", "test", "--tile", "192",
                   "--compare", str(compare), "--compare", str(same_recipe), "--consistency", "--card", str(card)])
    table = card.read_text()
    rows = [line.split(" | ") for line in table.splitlines() if line.startswith("| clean") or
            line.startswith("| degraded")]
    assert len(rows) == 2 * 3 * 8, "2 LR kinds x (2 families + overall) x 8 methods"
    assert {row[1] for row in rows} == {"neon", "sentinel2", "**overall**"}
    assert all(row[-1] == "+0.000 |" for row in rows if row[3] == held_out.BASELINE)
    assert {held_out.compare_label(compare), held_out.compare_label(same_recipe)} <= {row[3] for row in rows}
    assert "neon: " in table and table.startswith("before") and table.endswith("after\n")


def test_a_file_that_does_not_state_it_never_saw_the_family_is_refused(tmp_path):
    _student(tmp_path / "runs" / "without_neon" / held_out.PRODUCT, {"excluded_sensors": "landsat8"})
    with pytest.raises(SystemExit, match="never trained on neon"):
        held_out.left_out_runs(tmp_path / "runs")
    with pytest.raises(SystemExit, match="holds no without_"):
        held_out.left_out_runs(tmp_path / "elsewhere")


def test_left_out_models_of_two_scales_make_no_table(tmp_path):
    _student(tmp_path / "runs" / "without_neon" / held_out.PRODUCT, {"excluded_sensors": "neon"})
    x8 = tmp_path / "runs" / "without_landsat8" / held_out.PRODUCT
    x8.parent.mkdir(parents=True)
    save(build(StudentConfig.tiny(8)), x8, {"excluded_sensors": "landsat8"})
    with pytest.raises(SystemExit, match="several scales"):
        held_out.left_out_scale(held_out.left_out_runs(tmp_path / "runs"))
