"""The plugin's backend client against the real backend process: reuse, progress, failures as messages."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
from pathlib import Path

import pytest

from plugin_fixtures import PLUGIN_DIR, backend_python, write_rgb, write_tiny_weights
from plugin_fixtures import one_thread_backends  # noqa: F401 (a fixture, used by name)
from slimdiffsr_qgis.client import (BackendClient, BackendError, cuda_notice, describe_exit, protocol_problem,
                                    remove_partial_outputs)
from slimdiffsr_qgis.contract import (KIND_BAD_INPUT, KIND_CANCELLED, KIND_MISSING_DEPENDENCY, KIND_OUT_OF_MEMORY,
                                      PROTOCOL_VERSION, RunRequest, partial_path)
from slimdiffsr_qgis.interpreter import backend_launch

pytestmark = pytest.mark.usefixtures("one_thread_backends")
BOUND = 60.0


def client_for(python: str) -> BackendClient:
    return BackendClient(lambda: backend_launch(python, PLUGIN_DIR, False, os.environ, "/tmp"), hello_timeout=BOUND)


@pytest.fixture
def client():
    backend = client_for(backend_python())
    yield backend
    backend.stop()


@pytest.fixture
def request_for(tmp_path: Path):
    raster = write_rgb(tmp_path / "in.tif", 48, 32)
    weights = write_tiny_weights(tmp_path / "tiny.safetensors")

    def make(name: str, **extra) -> RunRequest:
        return RunRequest(input=raster, output=str(tmp_path / name), weights=weights, tile=16, overlap=2, **extra)

    return make


def run_in_thread(target) -> tuple[threading.Thread, dict]:
    outcome: dict = {}

    def body():
        try:
            outcome["value"] = target()
        except BaseException as error:  # handed to the test thread
            outcome["error"] = error

    thread = threading.Thread(target=body, daemon=True)
    thread.start()
    return thread, outcome


def test_the_plugin_and_the_backend_speak_the_same_protocol_version(client):
    from backend.server import PROTOCOL_VERSION as SERVER_PROTOCOL

    hello = client.start()
    assert hello["protocol"] == SERVER_PROTOCOL == PROTOCOL_VERSION and protocol_problem(hello, "py") == ""
    message = protocol_problem({**hello, "protocol": PROTOCOL_VERSION + 1}, "/venv/bin/python")
    assert f"/venv/bin/python speaks protocol {PROTOCOL_VERSION + 1}" in message and "Set up backend" in message


def test_many_requests_reuse_one_backend_process(client, request_for):
    seen = []
    first = client.run(request_for("a.tif"), progress=lambda done, total: seen.append((done, total)))
    second = client.run(request_for("b.tif"))
    assert client.starts == 1
    assert first["width"] == 192 and second["height"] == 128
    assert seen[-1][0] == seen[-1][1] and [d for d, _ in seen] == sorted(d for d, _ in seen)
    assert client.ping()["event"] == "pong"
    assert client.hello["environment"]["torch"]


def test_requests_from_several_threads_are_all_answered(client, request_for):
    threads = [run_in_thread(lambda n=n: client.run(request_for(f"t{n}.tif"))) for n in range(3)]
    for thread, _ in threads:
        thread.join(BOUND)
    outputs = sorted(Path(outcome["value"]["output"]).name for _, outcome in threads)
    assert outputs == ["t0.tif", "t1.tif", "t2.tif"] and client.starts == 1


def test_a_bad_band_index_is_a_bad_input_message(client, request_for):
    with pytest.raises(BackendError) as caught:
        client.run(request_for("bad.tif", bands=(1, 2, 4)))
    assert caught.value.kind == KIND_BAD_INPUT and "band 4" in str(caught.value)
    assert client.run(request_for("good.tif"))["output"].endswith("good.tif"), "the backend still serves"


def test_cancel_from_the_caller_stops_the_run_and_leaves_no_output(client, tmp_path):
    raster = write_rgb(tmp_path / "big.tif", 128, 96)
    weights = write_tiny_weights(tmp_path / "tiny.safetensors")
    started = threading.Event()
    output = tmp_path / "out.tif"
    with pytest.raises(BackendError) as caught:
        client.run(RunRequest(input=raster, output=str(output), weights=weights, tile=16, overlap=2),
                   progress=lambda done, total: started.set(), is_cancelled=started.is_set)
    assert caught.value.kind == KIND_CANCELLED and caught.value.cancelled and not output.exists()


def test_a_backend_killed_mid_run_is_reported_as_killed_and_restarted_next_time(client, tmp_path, request_for):
    raster = write_rgb(tmp_path / "big.tif", 128, 96)
    weights = write_tiny_weights(tmp_path / "tiny.safetensors")
    first_tile = threading.Event()
    thread, outcome = run_in_thread(lambda: client.run(
        RunRequest(input=raster, output=str(tmp_path / "k.tif"), weights=weights, tile=16, overlap=2),
        progress=lambda done, total: first_tile.set()))
    assert first_tile.wait(BOUND), "the run never reported a tile"
    os.kill(client.pid, signal.SIGKILL)
    thread.join(BOUND)
    assert not thread.is_alive(), "the caller hung after the backend died"
    error = outcome["error"]
    assert isinstance(error, BackendError) and error.kind == KIND_OUT_OF_MEMORY and "SIGKILL" in str(error)
    assert "memory" in str(error)
    assert list(tmp_path.glob(".k*")) == [] and not (tmp_path / "k.tif").exists(), "a partial file was left"
    assert client.run(request_for("after.tif"))["output"].endswith("after.tif")
    assert client.starts == 2


def test_partial_files_of_a_dead_backend_are_removed_and_those_of_another_writer_kept(tmp_path):
    target = str(tmp_path / "out.tif")
    dead = [partial_path(target, 4242, "ab12"), partial_path(target, 4242, "ab12") + ".msk"]
    live = partial_path(target, 5151, "cd34")
    for path in (*dead, live):
        Path(path).write_bytes(b"partial")
    assert sorted(remove_partial_outputs(target, 4242)) == sorted(dead)
    assert [p.name for p in tmp_path.iterdir()] == [Path(live).name]


def test_a_missing_interpreter_is_a_clear_missing_dependency_error(tmp_path):
    client = client_for(str(tmp_path / "no" / "python"))
    with pytest.raises(BackendError) as caught:
        client.ping()
    assert caught.value.kind == KIND_MISSING_DEPENDENCY and "cannot be started" in str(caught.value)
    assert "Set up backend" in str(caught.value)


def python_without_torch() -> str:
    """Debian's own Python (GDAL and numpy, no torch, no backend), or skip where it does not exist."""
    python = "/usr/bin/python3"
    if not Path(python).is_file() or subprocess.run([python, "-c", "import torch"], capture_output=True).returncode == 0:
        pytest.skip("needs a system Python without torch")
    return python


def test_an_interpreter_without_torch_says_torch_is_missing():
    client = client_for(python_without_torch())
    with pytest.raises(BackendError) as caught:
        client.ping()
    assert caught.value.kind == KIND_MISSING_DEPENDENCY and "torch" in str(caught.value)
    assert "Set up backend" in str(caught.value)


def test_an_interpreter_without_the_backend_package_is_named_as_such(tmp_path):
    installed_plugin = tmp_path / "plugins" / "slimdiffsr_qgis"
    client = BackendClient(lambda: backend_launch(python_without_torch(), installed_plugin, False, os.environ,
                                                  str(tmp_path)), hello_timeout=BOUND)
    with pytest.raises(BackendError) as caught:
        client.ping()
    assert caught.value.kind == KIND_MISSING_DEPENDENCY and "backend installed" in str(caught.value)
    assert "Set up backend" in str(caught.value)


def test_stop_ends_the_process_and_its_threads(request_for):
    client = client_for(backend_python())
    client.ping()
    process_id = client.pid
    before = {t.name for t in threading.enumerate()}
    assert {"slimdiffsr-events", "slimdiffsr-stderr"} <= before
    client.stop()
    assert not client.is_running() and client.pid is None
    assert not {"slimdiffsr-events", "slimdiffsr-stderr"} & {t.name for t in threading.enumerate()}
    with pytest.raises(ProcessLookupError):
        os.kill(process_id, 0)


def test_exit_descriptions_tell_a_kill_from_a_crash_from_an_exit():
    assert "SIGKILL" in describe_exit(-9, "") and "memory" in describe_exit(-9, "")
    assert "SIGSEGV" in describe_exit(-11, "tail")
    assert "exit code 1" in describe_exit(1, "Traceback ...")


def test_the_gpu_notice_appears_only_for_a_gpu_that_was_wanted_or_exists_but_fails(client):
    no_gpu = {"environment": {"cuda": False, "cuda_present": False, "cuda_detail": "torch reports no CUDA device"}}
    broken = {"environment": {"cuda": False, "cuda_present": True,
                              "cuda_detail": "CUDA is present but unusable: driver too old"}}
    working = {"environment": {"cuda": True, "cuda_present": True, "cuda_detail": "NVIDIA H200"}}
    assert cuda_notice(no_gpu, "auto") == "" and cuda_notice(no_gpu, "cpu") == ""
    assert "no CUDA device" in cuda_notice(no_gpu, "cuda")
    assert "driver too old" in cuda_notice(broken, "auto") and "the CPU was used" in cuda_notice(broken, "auto")
    assert cuda_notice(broken, "cpu") == ""
    assert [cuda_notice(working, device) for device in ("auto", "cpu", "cuda")] == ["", "", ""]
    hello = client.start()
    if not hello["environment"]["cuda"] and not hello["environment"].get("cuda_present", False):
        assert cuda_notice(hello, "auto") == "", "this machine has no GPU: nothing to warn about"
