"""The `slimdiffsr` command as a user runs it: a real subprocess, exit codes, messages, no leftovers."""

import os
import pickle
import subprocess
import sys

import numpy as np
import pytest

from rasters import read_raster, smooth_image, write_raster

TIMEOUT = 120


def slimdiffsr(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "backend.cli", *args], capture_output=True, text=True,
                          timeout=TIMEOUT)


def error_line(result: subprocess.CompletedProcess) -> str:
    lines = [line for line in result.stderr.splitlines() if "error" in line]
    assert len(lines) == 1, result.stderr
    return lines[0]


def assert_bad_input(result: subprocess.CompletedProcess, *words: str) -> None:
    assert result.returncode == 2, result.stderr
    line = error_line(result)
    for word in words:
        assert word in line, line


def test_run_writes_a_georeferenced_x4_output(rgb_uint8, tmp_path):
    out = str(tmp_path / "out.tif")
    result = slimdiffsr("run", rgb_uint8, out, "--scale", "4", "--model", "bicubic", "--tile", "32", "--overlap", "8")
    assert result.returncode == 0, result.stderr
    assert "320 x 256 px" in result.stderr, "the output size is stated before the run"
    assert "baseline" in result.stderr, "bicubic is labelled as a baseline"
    values, transform, *_ = read_raster(out)
    assert values.shape == (3, 256, 320) and transform[1] == 2.5


def test_many_inputs_go_to_an_output_folder(rgb_uint8, rgb_uint16, tmp_path):
    out_dir = tmp_path / "results"
    out_dir.mkdir()
    result = slimdiffsr("run", rgb_uint8, rgb_uint16, "--out-dir", str(out_dir), "--model", "bicubic")
    assert result.returncode == 0, result.stderr
    assert sorted(os.listdir(out_dir)) == ["rgb_uint16_x4.tif", "rgb_uint8_x4.tif"]


def test_missing_input(tmp_path):
    assert_bad_input(slimdiffsr("run", str(tmp_path / "nope.tif"), str(tmp_path / "o.tif"), "--model", "bicubic"),
                     "nope.tif", "does not exist")


def test_non_raster_input(tmp_path):
    text = tmp_path / "notes.tif"
    text.write_text("not a raster")
    assert_bad_input(slimdiffsr("run", str(text), str(tmp_path / "o.tif"), "--model", "bicubic"),
                     "notes.tif", "not a raster")
    assert not (tmp_path / "o.tif").exists()


def test_band_index_out_of_range(rgb_uint8, tmp_path):
    assert_bad_input(slimdiffsr("run", rgb_uint8, str(tmp_path / "o.tif"), "--bands", "1,2,4", "--model", "bicubic"),
                     "band 4", "3 bands")


def test_extent_outside_the_raster(rgb_uint8, tmp_path):
    assert_bad_input(slimdiffsr("run", rgb_uint8, str(tmp_path / "o.tif"), "--extent", "0,0,100,100",
                                "--model", "bicubic"), "does not overlap")


def test_extent_smaller_than_one_pixel(rgb_uint8, tmp_path):
    assert_bad_input(slimdiffsr("run", rgb_uint8, str(tmp_path / "o.tif"), "--extent",
                                "500010,4999900,500012,4999902", "--model", "bicubic"), "smaller than one pixel")


def test_rotated_geotransform(tmp_path):
    src = write_raster(str(tmp_path / "rotated.tif"), (smooth_image(3, 20, 20) * 255).astype(np.uint8),
                       geotransform=(500000, 10, 2, 5000000, 2, -10))
    assert_bad_input(slimdiffsr("run", src, str(tmp_path / "o.tif"), "--model", "bicubic"), "rotated")


def test_unsupported_scale(rgb_uint8, tmp_path):
    result = slimdiffsr("run", rgb_uint8, str(tmp_path / "o.tif"), "--scale", "3", "--model", "bicubic")
    assert result.returncode == 2
    assert "--scale" in result.stderr and "3" in result.stderr


def test_unwritable_output_folder(rgb_uint8, tmp_path):
    if os.geteuid() == 0:
        folder = "/proc"  # not writable even for root
    else:
        folder = str(tmp_path / "locked")
        os.mkdir(folder, 0o555)
    assert_bad_input(slimdiffsr("run", rgb_uint8, os.path.join(folder, "o.tif"), "--model", "bicubic"),
                     "not writable")


def test_output_equal_to_input(rgb_uint8):
    assert_bad_input(slimdiffsr("run", rgb_uint8, rgb_uint8, "--model", "bicubic", "--overwrite"), "is the input")


def test_existing_output_is_kept_without_overwrite(rgb_uint8, tmp_path):
    out = tmp_path / "o.tif"
    out.write_bytes(b"keep me")
    assert_bad_input(slimdiffsr("run", rgb_uint8, str(out), "--model", "bicubic"), "already exists", "--overwrite")
    assert out.read_bytes() == b"keep me"


def test_missing_weights_file(rgb_uint8, tmp_path):
    assert_bad_input(slimdiffsr("run", rgb_uint8, str(tmp_path / "o.tif"), "--weights", str(tmp_path / "w.safetensors")),
                     "w.safetensors", "does not exist")
    assert not (tmp_path / "o.tif").exists()


def test_corrupt_weights_file(rgb_uint8, tmp_path):
    weights = tmp_path / "w.safetensors"
    weights.write_bytes(os.urandom(4096))
    assert_bad_input(slimdiffsr("run", rgb_uint8, str(tmp_path / "o.tif"), "--weights", str(weights)),
                     "w.safetensors")
    assert not (tmp_path / "o.tif").exists()


def test_pickle_instead_of_safetensors_is_refused_without_unpickling(rgb_uint8, tmp_path):
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    weights = tmp_path / "w.safetensors"
    weights.write_bytes(pickle.dumps({"state": Exploit()}))
    assert_bad_input(slimdiffsr("run", rgb_uint8, str(tmp_path / "o.tif"), "--weights", str(weights)),
                     "w.safetensors")
    assert not marker.exists(), "the weights file must never be unpickled"
    assert not (tmp_path / "o.tif").exists()
