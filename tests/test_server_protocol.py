"""The backend server's JSON-lines protocol, spoken directly to a real `python -m backend.server` process."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from plugin_fixtures import REPO, backend_python, write_rgb, write_tiny_shipped_like_weights, write_tiny_weights
from server_helpers import WAIT, RawServer
from backend.server import missing_dependency
from slimdiffsr_qgis.contract import PROTOCOL_VERSION

@pytest.fixture
def server():
    backend = RawServer()
    yield backend
    backend.close()


@pytest.fixture
def inputs(tmp_path: Path) -> dict:
    return {"raster": write_rgb(tmp_path / "in.tif", 48, 32), "weights": write_tiny_weights(tmp_path / "tiny.safetensors"),
            "folder": tmp_path}


def test_hello_names_protocol_package_and_library_versions(server):
    hello = server.event()
    assert hello["event"] == "hello" and hello["protocol"] == PROTOCOL_VERSION
    environment = hello["environment"]
    assert environment["package"] == hello["version"]
    assert environment["torch"] and environment["gdal"] and "cuda" in environment


def test_run_streams_progress_then_result_and_serves_many_requests_with_one_model(server, inputs):
    server.event()
    request = {"input": inputs["raster"], "weights": inputs["weights"], "tile": 16, "overlap": 2}
    server.send({"id": 1, "op": "run", "output": str(inputs["folder"] / "a.tif"), **request})
    first = server.until(1)
    progress = [e for e in first if e["event"] == "progress"]
    assert progress and progress[-1]["done"] == progress[-1]["total"]
    assert first[-1]["event"] == "result" and first[-1]["width"] == 48 * 4 and first[-1]["height"] == 32 * 4
    server.send({"id": 2, "op": "plan", "output": str(inputs["folder"] / "b.tif"), **request})
    plan = server.until(2, ("plan", "error"))[-1]
    assert plan["event"] == "plan" and plan["tiles"] == first[-1]["tiles"]
    assert plan["seconds_estimate"] is not None, "the estimate comes from the first run's time per tile"
    server.send({"id": 3, "op": "run", "output": str(inputs["folder"] / "b.tif"), **request})
    assert server.until(3)[-1]["event"] == "result"
    assert Path(inputs["folder"] / "b.tif").is_file()
    server.send({"id": 4, "op": "shutdown"})
    assert server.process.wait(timeout=WAIT) == 0
    log = server.log()
    assert log.count("model: tiny.safetensors") == 1, f"the model was not loaded exactly once:\n{log}"


def test_a_run_with_consistency_reports_its_figures_in_the_result_and_the_file(server, tmp_path):
    from osgeo import gdal

    server.event()
    raster = write_rgb(tmp_path / "in.tif", 48, 32)
    weights = write_tiny_shipped_like_weights(tmp_path / "tiny.safetensors")
    output = str(tmp_path / "out.tif")
    server.send({"id": "c", "op": "run", "input": raster, "output": output, "weights": weights, "tile": 16,
                 "overlap": 2, "consistency": True})
    result = server.until("c")[-1]
    assert result["event"] == "result", result
    figures = result["consistency"]
    assert set(figures) >= {"SLIMDIFFSR_CONSISTENCY_MAD", "SLIMDIFFSR_CONSISTENCY_MAD_FRACTION",
                            "SLIMDIFFSR_CONSISTENCY_SHIFT", "SLIMDIFFSR_CONSISTENCY_SPECTRAL_ANGLE"}
    dataset = gdal.Open(output)
    metadata = dataset.GetMetadata()
    dataset = None
    assert {key: metadata[key] for key in figures} == figures
    assert metadata["SLIMDIFFSR_CONSISTENCY"] == "back-projected to the input"


def test_ping_and_info_are_answered_while_a_run_is_busy(server, inputs):
    server.event()
    raster = write_rgb(inputs["folder"] / "big.tif", 128, 96)
    server.send({"id": 1, "op": "run", "input": raster, "output": str(inputs["folder"] / "o.tif"),
                 "weights": inputs["weights"], "tile": 16, "overlap": 2})
    while server.event().get("event") != "progress":
        pass
    server.send({"id": 2, "op": "ping"})
    server.send({"id": 3, "op": "info"})
    answers = {}
    while len(answers) < 2 or 1 not in answers:
        event = server.event()
        if event["event"] in ("pong", "info", "result", "error"):
            answers.setdefault(event["id"], event)
    order = [event_id for event_id in answers]
    assert order.index(2) < order.index(1) and order.index(3) < order.index(1), "ping/info waited for the run"
    assert answers[3]["running"] == 1


def test_cancel_stops_between_tiles_and_removes_the_partial_output(server, tmp_path):
    server.event()
    raster = write_rgb(tmp_path / "big.tif", 128, 96)
    weights = write_tiny_weights(tmp_path / "tiny.safetensors")
    output = tmp_path / "cancelled.tif"
    server.send({"id": 7, "op": "run", "input": raster, "output": str(output), "weights": weights,
                 "tile": 16, "overlap": 2})
    first = server.until(7, ("progress", "result", "error"))[-1]
    assert first["event"] == "progress"
    server.send({"op": "cancel", "id": 7})
    events = server.until(7)
    assert events[-1]["event"] == "error" and events[-1]["kind"] == "cancelled"
    done = [e["done"] for e in events if e["event"] == "progress"]
    assert not done or done[-1] < first["total"], "the run went on to the end"
    assert not output.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big.tif", "tiny.safetensors"], "a partial file was left"


def test_a_request_cancelled_while_queued_never_starts(server, inputs):
    server.event()
    request = {"input": inputs["raster"], "weights": inputs["weights"], "tile": 16, "overlap": 2}
    server.send({"id": 1, "op": "run", "output": str(inputs["folder"] / "first.tif"), **request})
    server.send({"id": 2, "op": "run", "output": str(inputs["folder"] / "second.tif"), **request})
    server.send({"op": "cancel", "id": 2})
    second = server.until(2)
    assert [e["event"] for e in second] == ["error"] and second[0]["kind"] == "cancelled"
    assert not (inputs["folder"] / "second.tif").exists()


def test_bad_requests_are_error_events_and_the_server_keeps_serving(server, inputs):
    server.event()
    server.send({"id": 1, "op": "run", "input": inputs["raster"], "output": str(inputs["folder"] / "o.tif"),
                 "weights": inputs["weights"], "bands": [1, 2, 9]})
    error = server.until(1)[-1]
    assert error["kind"] == "bad_input" and "band 9" in error["message"]
    server.send_raw(b"this is not json\n")
    assert server.event()["kind"] == "protocol"
    server.send({"id": 2, "op": "dance"})
    assert "unknown op" in server.until(2)[-1]["message"]
    server.send({"id": 3, "op": "run", "input": inputs["raster"], "output": str(inputs["folder"] / "o.tif"),
                 "weights": inputs["weights"], "scale": 8})
    assert "x4, not x8" in server.until(3)[-1]["message"], "weights trained for x4 refuse x8 clearly"
    server.send({"id": 4, "op": "ping"})
    assert server.until(4, ("pong",))[-1]["event"] == "pong"


def test_contract_errors_are_bad_input_and_bad_ids_are_protocol_errors_answered_with_a_null_id(server, inputs):
    server.event()
    request = {"op": "run", "input": inputs["raster"], "output": str(inputs["folder"] / "o.tif"),
               "weights": inputs["weights"]}
    server.send({"id": 1, **request, "normalisation": 5})
    assert server.until(1)[-1]["kind"] == "bad_input"
    server.send({"id": 2, **request, "extent_crs": 4326})
    assert server.until(2)[-1]["kind"] == "bad_input"
    for bad_id in ([1], {"a": 1}, 1.5, True, 2**60):
        server.send({"id": bad_id, **request})
        error = server.event()
        assert error["event"] == "error" and error["kind"] == "protocol" and error["id"] is None
        assert "request id must be a string or an integer" in error["message"]
    for line in (b'{"id": NaN, "op": "ping"}\n', b'{"id": Infinity, "op": "ping"}\n', b"\xff\xfe{}\n"):
        server.send_raw(line)
        error = server.event()
        assert error["event"] == "error" and error["kind"] == "protocol" and error["id"] is None
    server.send({"id": "still-here", "op": "ping"})
    assert server.event() == {"id": "still-here", "event": "pong"}
    assert not (inputs["folder"] / "o.tif").exists()


def test_a_stale_cancel_does_not_block_a_later_request_that_reuses_the_id(server, inputs):
    server.event()
    request = {"op": "run", "input": inputs["raster"], "weights": inputs["weights"], "tile": 16, "overlap": 2}
    server.send({"id": 5, **request, "output": str(inputs["folder"] / "first.tif")})
    assert server.until(5)[-1]["event"] == "result"
    server.send({"op": "cancel", "id": 5})  # too late: request 5 has finished
    server.send({"op": "cancel", "id": "never-sent"})
    server.send({"id": 5, **request, "output": str(inputs["folder"] / "second.tif")})
    assert server.until(5)[-1]["event"] == "result", "the stale cancel stopped a later request with the same id"
    server.send({"id": "never-sent", **request, "output": str(inputs["folder"] / "third.tif")})
    assert server.until("never-sent")[-1]["event"] == "result"
    assert "neither running nor queued" in server.log()


def test_closing_stdin_during_a_run_cancels_it_and_exits_within_two_seconds(server, tmp_path):
    server.event()
    raster = write_rgb(tmp_path / "big.tif", 128, 96)
    weights = write_tiny_weights(tmp_path / "tiny.safetensors")
    server.send({"id": 1, "op": "run", "input": raster, "output": str(tmp_path / "o.tif"), "weights": weights,
                 "tile": 16, "overlap": 2})
    assert server.until(1, ("progress", "result", "error"))[-1]["event"] == "progress"
    assert server.seconds_to_exit_after_closing_stdin() < 2.0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big.tif", "tiny.safetensors"], "output or partial left"


def test_shutdown_says_bye_and_exits_cleanly(server):
    server.event()
    server.send({"id": 9, "op": "shutdown"})
    assert server.until(9, ("bye",))[-1]["event"] == "bye"
    assert server.process.wait(timeout=WAIT) == 0


def test_end_of_input_stops_the_server(server):
    server.event()
    server.process.stdin.close()
    assert server.process.wait(timeout=WAIT) == 0


def test_only_protocol_lines_reach_stdout_even_when_libraries_print():
    script = ("import os; from backend.server import protocol_stream; out = protocol_stream(); "
              "print('a library print'); os.write(1, b'a C library write\\n'); out.write('{}\\n'); out.flush()")
    done = subprocess.run([backend_python(), "-c", script], cwd=REPO, capture_output=True, text=True, timeout=WAIT)
    assert done.stdout == "{}\n"
    assert "a library print" in done.stderr and "a C library write" in done.stderr


def test_an_interpreter_without_torch_reports_the_missing_dependency(tmp_path):
    python = "/usr/bin/python3"
    probe = subprocess.run([python, "-c", "import torch"], capture_output=True)
    if probe.returncode == 0:
        pytest.skip("the system Python has torch, so it cannot show a missing one")
    backend = RawServer(python)
    try:
        event = backend.event()
        assert event["event"] == "error" and event["kind"] == "missing_dependency" and event["missing"] == "torch"
        assert "PyTorch is not installed: pip install torch" in event["message"] and python in event["message"]
        assert backend.process.wait(timeout=WAIT) == 3
    finally:
        backend.close()


def test_missing_gdal_bindings_are_named_as_such(monkeypatch):
    monkeypatch.setitem(sys.modules, "osgeo.gdal", None)  # makes `import osgeo.gdal` fail as if absent
    missing, message = missing_dependency()
    assert missing == "osgeo"
    assert "GDAL Python bindings (osgeo) is not installed" in message and "PyTorch" not in message
    assert "QGIS's own Python" in message and "Set up backend" in message


def test_a_missing_module_of_the_backend_itself_names_the_slimdiffsr_package():
    error = ModuleNotFoundError("No module named 'backend.tiling'", name="backend.tiling")
    missing, message = missing_dependency(error)
    assert missing == "slimdiffsr" and "slimdiffsr package" in message and "reinstall" in message
