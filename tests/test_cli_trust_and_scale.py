"""The CLI's trust and scale-out commands as users run them: --consistency, check, info on an output, --workers."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
from osgeo import gdal

from backend.cli import output_stem
from plugin_fixtures import write_tiny_shipped_like_weights
from rasters import read_raster, smooth_image, write_raster

TIMEOUT = 300


def slimdiffsr(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "backend.cli", *args], capture_output=True, text=True,
                          timeout=TIMEOUT, env={**os.environ, "OMP_NUM_THREADS": "1"})


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> str:
    return write_tiny_shipped_like_weights(tmp_path_factory.mktemp("weights") / "tiny.safetensors")


@pytest.fixture
def scene(tmp_path) -> str:
    return write_raster(str(tmp_path / "scene.tif"), (smooth_image(4, 60, 72) * 9000).astype(np.uint16))


def test_consistency_on_is_recorded_and_check_and_info_report_the_figures(scene, weights, tmp_path):
    out = str(tmp_path / "out.tif")
    ran = slimdiffsr("run", scene, out, "--weights", weights, "--tile", "32", "--overlap", "8", "--consistency", "on")
    assert ran.returncode == 0, ran.stderr
    info = slimdiffsr("info", out)
    assert info.returncode == 0, info.stderr
    assert "consistency: back-projected to the input" in info.stdout
    assert "as a fraction of the input's 2-98 % range" in info.stdout
    assert "spectral angle" in info.stdout and "shift by phase correlation" in info.stdout
    checked = slimdiffsr("check", out, "--input", scene)
    assert checked.returncode == 0, checked.stderr
    fraction = [line for line in checked.stdout.splitlines() if "2-98 % range" in line][0]
    assert fraction.strip() in info.stdout


def test_check_scores_another_tools_output_and_info_points_to_check(scene, tmp_path):
    cubic = str(tmp_path / "cubic.tif")
    gdal.Translate(cubic, scene, xRes=2.5, yRes=2.5, resampleAlg="cubic")
    checked = slimdiffsr("check", cubic, "--input", scene)
    assert checked.returncode == 0, checked.stderr
    assert "shift by phase correlation" in checked.stdout
    info = slimdiffsr("info", cubic)
    assert info.returncode == 2
    assert f"slimdiffsr check {cubic} --input INPUT" in info.stderr


def test_check_refuses_an_output_that_is_not_a_whole_fraction_of_the_input(scene, tmp_path):
    odd = str(tmp_path / "odd.tif")
    gdal.Translate(odd, scene, xRes=3.0, yRes=3.0)
    checked = slimdiffsr("check", odd, "--input", scene)
    assert checked.returncode == 2 and "whole fraction" in checked.stderr


def test_many_scenes_on_a_local_two_worker_cluster_equal_serial_runs(tmp_path, weights):
    scenes = [write_raster(str(tmp_path / f"s{i}.tif"), (smooth_image(b, 48, 56, seed=i) * 9000).astype(np.uint16))
              for i, b in enumerate((1, 3, 4))]
    on_cluster, serial = tmp_path / "cluster", tmp_path / "serial"
    on_cluster.mkdir()
    serial.mkdir()
    common = ["--weights", weights, "--tile", "32", "--overlap", "8"]
    ran = slimdiffsr("run", *scenes, "--out-dir", str(on_cluster), "--workers", "2", *common)
    assert ran.returncode == 0, ran.stderr
    assert slimdiffsr("run", *scenes, "--out-dir", str(serial), *common).returncode == 0
    assert sorted(os.listdir(on_cluster)) == sorted(os.listdir(serial)) == ["s0_x4.tif", "s1_x4.tif", "s2_x4.tif"]
    for name in os.listdir(serial):
        expected, actual = read_raster(str(serial / name))[0], read_raster(str(on_cluster / name))[0]
        # Workers run torch with another thread count than a serial run: allow 1 DN of rounding.
        assert np.abs(expected.astype(np.int32) - actual.astype(np.int32)).max() <= 1


def test_one_scene_in_windows_on_a_local_two_worker_cluster_equals_a_serial_run(tmp_path, weights):
    scene = write_raster(str(tmp_path / "big.tif"), (smooth_image(4, 150, 130, seed=5) * 9000).astype(np.uint16))
    common = ["--weights", weights, "--tile", "32", "--overlap", "8"]
    windowed, serial = str(tmp_path / "windowed.tif"), str(tmp_path / "serial.tif")
    ran = slimdiffsr("run", scene, windowed, "--workers", "2", "--windows", "3", *common)
    assert ran.returncode == 0, ran.stderr
    assert slimdiffsr("run", scene, serial, *common).returncode == 0
    expected, actual = read_raster(serial)[0], read_raster(windowed)[0]
    assert actual.shape == expected.shape == (4, 600, 520)
    # Workers run torch with another thread count than a serial run: allow 1 DN of rounding.
    assert np.abs(expected.astype(np.int32) - actual.astype(np.int32)).max() <= 1
    assert sorted(os.listdir(tmp_path)) == ["big.tif", "serial.tif", "windowed.tif"]


@pytest.mark.parametrize("source, stem", [
    ("/data/T33_B04.tif", "T33_B04"),
    ('NETCDF:"/data/f.nc":red', "f_red"),
    ("/vsizip/archive.zip/inner/scene.tif", "scene"),
    ("HDF5:/x/y.h5://a b", "y_a_b"),
])
def test_output_names_in_an_output_folder_come_from_files_and_subdatasets(source, stem):
    assert output_stem(source) == stem


def test_uncertainty_writes_the_error_layer_beside_the_output_and_info_describes_the_head(scene, tmp_path):
    from plugin_fixtures import student_with_head

    weights = student_with_head(tmp_path)
    out, errors = str(tmp_path / "out.tif"), str(tmp_path / "out_error.tif")
    ran = slimdiffsr("run", scene, out, "--weights", weights, "--tile", "32", "--overlap", "8", "--uncertainty", errors)
    assert ran.returncode == 0, ran.stderr
    assert f"wrote {out} and {errors}" in ran.stderr
    output, layer = read_raster(out), read_raster(errors)
    assert layer[0].shape == output[0].shape and layer[1] == output[1] and layer[2] == output[2]
    info = slimdiffsr("info", str(tmp_path / "tiny.error.safetensors"))
    assert info.returncode == 0, info.stderr
    assert "error head" in info.stdout and "output whose error it learnt: back-projected to the input" in info.stdout
    assert "statistic: median absolute error" in info.stdout


def test_uncertainty_names_one_file_so_it_takes_one_input(scene, tmp_path):
    ran = slimdiffsr("run", scene, scene, "--out-dir", str(tmp_path), "--uncertainty", str(tmp_path / "e.tif"))
    assert ran.returncode == 2 and "--uncertainty names one file" in ran.stderr
