"""The `slimdiffsr` command as a user runs it: a real subprocess, exit codes, messages, no leftovers."""

import os
import pickle
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from plugin_fixtures import write_tiny_shipped_like_weights
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


@pytest.fixture(scope="module")
def student(tmp_path_factory) -> str:
    """Refusals and runs go through a student saved with the shipped file's metadata, as users' runs do."""
    return write_tiny_shipped_like_weights(tmp_path_factory.mktemp("weights") / "student.safetensors")


def test_many_inputs_go_to_an_output_folder(rgb_uint8, rgb_uint16, tmp_path, student):
    out_dir = tmp_path / "results"
    out_dir.mkdir()
    result = slimdiffsr("run", rgb_uint8, rgb_uint16, "--out-dir", str(out_dir), "--weights", student)
    assert result.returncode == 0, result.stderr
    assert sorted(os.listdir(out_dir)) == ["rgb_uint16_x4.tif", "rgb_uint8_x4.tif"]


def test_missing_input(tmp_path, student):
    assert_bad_input(slimdiffsr("run", str(tmp_path / "nope.tif"), str(tmp_path / "o.tif"), "--weights", student),
                     "nope.tif", "does not exist")


def test_non_raster_input(tmp_path, student):
    text = tmp_path / "notes.tif"
    text.write_text("not a raster")
    assert_bad_input(slimdiffsr("run", str(text), str(tmp_path / "o.tif"), "--weights", student),
                     "notes.tif", "not a raster")
    assert not (tmp_path / "o.tif").exists()


def test_band_index_out_of_range(rgb_uint8, tmp_path, student):
    assert_bad_input(slimdiffsr("run", rgb_uint8, str(tmp_path / "o.tif"), "--bands", "1,2,4", "--weights", student),
                     "band 4", "3 bands")


def test_extent_outside_the_raster(rgb_uint8, tmp_path, student):
    assert_bad_input(slimdiffsr("run", rgb_uint8, str(tmp_path / "o.tif"), "--extent", "0,0,100,100",
                                "--weights", student), "does not overlap")


def test_extent_smaller_than_one_pixel(rgb_uint8, tmp_path, student):
    assert_bad_input(slimdiffsr("run", rgb_uint8, str(tmp_path / "o.tif"), "--extent",
                                "500010,4999900,500012,4999902", "--weights", student), "smaller than one pixel")


def test_rotated_geotransform(tmp_path, student):
    src = write_raster(str(tmp_path / "rotated.tif"), (smooth_image(3, 20, 20) * 255).astype(np.uint8),
                       geotransform=(500000, 10, 2, 5000000, 2, -10))
    assert_bad_input(slimdiffsr("run", src, str(tmp_path / "o.tif"), "--weights", student), "rotated")


def test_unsupported_scale(rgb_uint8, tmp_path, student):
    result = slimdiffsr("run", rgb_uint8, str(tmp_path / "o.tif"), "--scale", "3", "--weights", student)
    assert result.returncode == 2
    assert "--scale" in result.stderr and "3" in result.stderr


def test_unwritable_output_folder(rgb_uint8, tmp_path, student):
    if os.geteuid() == 0:
        folder = "/proc"  # not writable even for root
    else:
        folder = str(tmp_path / "locked")
        os.mkdir(folder, 0o555)
    assert_bad_input(slimdiffsr("run", rgb_uint8, os.path.join(folder, "o.tif"), "--weights", student),
                     "not writable")


def test_output_equal_to_input(rgb_uint8, student):
    assert_bad_input(slimdiffsr("run", rgb_uint8, rgb_uint8, "--weights", student, "--overwrite"), "is the input")


def test_existing_output_is_kept_without_overwrite(rgb_uint8, tmp_path, student):
    out = tmp_path / "o.tif"
    out.write_bytes(b"keep me")
    assert_bad_input(slimdiffsr("run", rgb_uint8, str(out), "--weights", student), "already exists", "--overwrite")
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


def test_verbose_is_accepted_before_and_after_the_subcommand_and_at_the_end(rgb_uint8, tmp_path, student):
    for index, where in enumerate((["-v", "run"], ["run", "-v"], ["run"])):
        out = str(tmp_path / f"o{index}.tif")
        extra = ["--verbose"] if where == ["run"] else []
        result = slimdiffsr(*where, rgb_uint8, out, "--weights", student, *extra)
        assert result.returncode == 0, result.stderr
        assert os.path.isfile(out)
    assert slimdiffsr("info", "-v").returncode == 0


def test_bands_and_rgb_choose_the_written_bands_and_the_colour_triplet(tmp_path):
    weights = write_tiny_shipped_like_weights(tmp_path / "student.safetensors")
    source = write_raster(str(tmp_path / "four.tif"), (smooth_image(4, 24, 32) * 10000).astype(np.uint16))
    written = str(tmp_path / "two.tif")
    result = slimdiffsr("run", source, written, "--weights", weights, "--bands", "4,1", "--tile", "32",
                        "--overlap", "4")
    assert result.returncode == 0, result.stderr
    assert "2 model pass(es) per tile" in result.stderr, "bands 4 and 1 each go through the model alone"
    assert read_raster(written)[0].shape == (2, 96, 128)
    every = str(tmp_path / "every.tif")
    result = slimdiffsr("run", source, every, "--weights", weights, "--bands", "all", "--rgb", "3,2,1",
                        "--tile", "32", "--overlap", "4")
    assert result.returncode == 0, result.stderr
    assert "2 model pass(es) per tile" in result.stderr, "the triplet together, then band 4 alone"
    assert read_raster(every)[0].shape == (4, 96, 128)
    assert_bad_input(slimdiffsr("run", source, str(tmp_path / "x.tif"), "--weights", weights, "--bands", "1,2",
                                "--rgb", "3,2,1"), "rgb")


def test_sigterm_during_a_run_cancels_it_exit_143_and_leaves_no_file(tmp_path):
    run = BackgroundRun(tmp_path)
    run.wait_for_line("tile passes")
    run.process.send_signal(signal.SIGTERM)
    assert run.process.wait(timeout=TIMEOUT) == 143, run.stderr()
    assert "cancelled" in run.stderr() and "Traceback" not in run.stderr()
    assert run.leftovers() == [], "the output or its partial file was left behind"


def test_a_partial_file_left_by_a_killed_run_is_removed_by_the_next_run_to_the_same_target(tmp_path):
    run = BackgroundRun(tmp_path)
    run.wait_until(lambda: any(".partial-" in name for name in run.leftovers()), "the run to open its partial file")
    run.process.kill()
    run.process.wait(timeout=TIMEOUT)
    assert [name for name in run.leftovers() if ".partial-" in name], "a killed run leaves its partial file"
    result = slimdiffsr("run", run.source, run.output, "--weights", run.weights, "--tile", "32", "--overlap", "4",
                        "--extent", "500000,4999680,500320,5000000")
    assert result.returncode == 0, result.stderr
    assert run.leftovers() == ["out.tif"], "the next run to the same target did not remove the stale partial"


def test_ctrl_c_while_torch_is_still_importing_exits_130_without_a_traceback(tmp_path):
    run = BackgroundRun(tmp_path)
    run.wait_until(lambda: "torch" in Path(f"/proc/{run.process.pid}/maps").read_text(), "torch to start loading")
    run.process.send_signal(signal.SIGINT)
    assert run.process.wait(timeout=TIMEOUT) == 130, run.stderr()
    assert "cancelled" in run.stderr()
    assert "Traceback" not in run.stderr() and "KeyboardInterrupt" not in run.stderr(), run.stderr()
    assert run.leftovers() == []


class BackgroundRun:
    """`slimdiffsr run` of a tiny shipped-like student over a raster that takes it several seconds,
    started in the background with its stderr collected line by line."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.weights = write_tiny_shipped_like_weights(folder / "student.safetensors")
        self.source = write_raster(str(folder / "in.tif"), (smooth_image(3, 256, 256) * 255).astype(np.uint8))
        self.output = str(folder / "out.tif")
        self.inputs = {"student.safetensors", "in.tif"}
        self.process = subprocess.Popen([sys.executable, "-m", "backend.cli", "run", self.source, self.output,
                                         "--weights", self.weights, "--tile", "32", "--overlap", "4"],
                                        stderr=subprocess.PIPE, text=True)
        self.lines: list[str] = []
        self.reader = threading.Thread(target=lambda: self.lines.extend(self.process.stderr), daemon=True)
        self.reader.start()

    def wait_until(self, condition, what: str) -> None:
        deadline = time.monotonic() + TIMEOUT
        while not condition():
            assert self.process.poll() is None, f"the run ended before {what}: {self.stderr()}"
            assert time.monotonic() < deadline, f"timed out waiting for {what}"
            time.sleep(0.01)

    def wait_for_line(self, text: str) -> None:
        self.wait_until(lambda: any(text in line for line in self.lines), repr(text))

    def stderr(self) -> str:
        if self.process.poll() is not None:
            self.reader.join(timeout=TIMEOUT)
        return "".join(self.lines)

    def leftovers(self) -> list[str]:
        """Files in the folder other than the run's inputs (GDAL sidecars of the input included)."""
        return sorted(name for name in os.listdir(self.folder)
                      if name not in self.inputs and not name.startswith("in.tif."))
