"""The whole chain through its entry points: stage 0 -> 1 -> 2 -> evaluate on a folder of GeoTIFFs,
then the student super-resolves a GeoTIFF through the backend CLI."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
from osgeo import gdal

from backend.models import load
from rasters import smooth_image, write_raster
from training.evaluation import report as evaluate
from training.stages import student as train_student
from training.stages import teacher as train_teacher
from training.stages import uncertainty as train_uncertainty
from training_helpers import TINY_CONFIG

torch.set_num_threads(1)
REPO = Path(__file__).resolve().parent.parent


def test_tiny_chain_runs_end_to_end_and_its_student_works_in_the_backend(tmp_path):
    data = tmp_path / "scenes"
    data.mkdir()
    for seed in range(2):
        write_raster(str(data / f"scene{seed}.tif"), (smooth_image(3, 96, 96, seed=seed) * 10000).astype(np.uint16))
    out = tmp_path / "run"
    common = ["--config", str(TINY_CONFIG), "--out", str(out), "--set", f"data.folder={data}"]
    steps = ["--set", "uncertainty.loop.steps=2", "--set", "teacher.loop.steps=2", "--set", "student.loop.steps=2"]
    assert train_uncertainty.main(common + steps) == 0
    assert train_teacher.main(common + steps) == 0
    assert train_student.main(common + steps) == 0
    assert evaluate.main(["--config", str(TINY_CONFIG), "--out-dir", str(out), "--set", f"data.folder={data}",
                          "--set", "evaluate.crop=32", "--set", "evaluate.limit=2"]) == 0

    weights = out / "student" / "student.safetensors"
    model = load(weights)
    assert model.meta["teacher"] == str(out / "teacher" / "teacher.safetensors")
    assert model.meta["stage"] == "student" and model.meta["steps"] == "2"
    assert "initialised from the teacher" in model.meta["training_log"]
    table = (out / "evaluation" / "evaluation.md").read_text()
    assert "bicubic (baseline)" in table and "student.safetensors" in table

    result = tmp_path / "sr.tif"
    completed = subprocess.run(
        [sys.executable, "-m", "backend.cli", "run", str(data / "scene0.tif"), str(result), "--weights", str(weights),
         "--scale", "4", "--device", "cpu"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stderr
    dataset = gdal.Open(str(result))
    assert (dataset.RasterXSize, dataset.RasterYSize, dataset.RasterCount) == (384, 384, 3)
    assert dataset.GetGeoTransform()[1] == 10.0 / 4
