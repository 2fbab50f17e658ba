"""Every kind of raster users bring comes out whole, through the engine, the CLI and the backend server.

The student here is tiny but carries the shipped weights' metadata, so each run takes
the users' path: the recorded percentile stretch, the GroupNorm statistics passes,
band passes, masks and the atomic commit. The engine leg uses small tiles, so every
case is cut into several; the CLI and server legs use the default tiling users get
(there, only the 3 x 5000 strip has several tiles).
"""

from __future__ import annotations

import json
import subprocess
import threading
from pathlib import Path

import pytest

from backend.engine import Engine
from input_cases import assert_only, check_output, input_cases, write_cases
from plugin_fixtures import REPO, backend_python, one_thread_backends, write_tiny_shipped_like_weights  # noqa: F401
from slimdiffsr_qgis.contract import RunRequest

SMALL_TILES = dict(tile=32, overlap=8)
SUBPROCESS_TIMEOUT = 600


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> str:
    return write_tiny_shipped_like_weights(tmp_path_factory.mktemp("weights") / "tiny_x4.safetensors")


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict[str, str]:
    return write_cases(tmp_path_factory.mktemp("inputs"))


@pytest.fixture(scope="module")
def engine() -> Engine:
    return Engine()


@pytest.mark.parametrize("case", input_cases(), ids=lambda case: case.name)
def test_every_input_kind_comes_out_whole_through_the_engine(case, inputs, weights, engine, tmp_path):
    out = tmp_path / f"{case.name}_x4.tif"
    tiling = SMALL_TILES if case.height < 1000 else {}  # the strip has many tiles at the default size already
    engine.run(RunRequest(input=inputs[case.name], output=str(out), weights=weights, **tiling))
    check_output(inputs[case.name], str(out))
    assert_only(tmp_path, [out.name])
    assert_only(Path(inputs[case.name]).parent, [Path(path).name for path in inputs.values()])


def test_every_input_kind_comes_out_whole_through_one_cli_call(inputs, weights, tmp_path, one_thread_backends):
    cli = REPO / ".venv" / "bin" / "slimdiffsr"
    if not cli.is_file():
        pytest.skip(f"{cli} is not installed (make setup)")
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    done = subprocess.run([str(cli), "run", *inputs.values(), "--out-dir", str(out_dir), "--weights", weights],
                          capture_output=True, text=True, cwd=REPO, timeout=SUBPROCESS_TIMEOUT)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Exception ignored" not in done.stderr
    for name, path in inputs.items():
        check_output(path, str(out_dir / f"{name}_x4.tif"))
    assert_only(out_dir, [f"{name}_x4.tif" for name in inputs])


def test_every_input_kind_comes_out_whole_through_one_backend_server(inputs, weights, tmp_path,
                                                                     one_thread_backends):
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    outputs = {name: str(out_dir / f"{name}_x4.tif") for name in inputs}
    server = subprocess.Popen([backend_python(), "-m", "backend.server"], cwd=REPO, text=True,
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    watchdog = threading.Timer(SUBPROCESS_TIMEOUT, server.kill)
    watchdog.start()
    stderr: list[str] = []
    drain = threading.Thread(target=lambda: stderr.extend(server.stderr), daemon=True)
    drain.start()
    try:
        assert json.loads(server.stdout.readline())["event"] == "hello"
        for index, name in enumerate(inputs):
            request = RunRequest(input=inputs[name], output=outputs[name], weights=weights)
            server.stdin.write(json.dumps({"id": index, "op": "run", **request.to_dict()}) + "\n")
        server.stdin.flush()
        terminal = {}
        while len(terminal) < len(inputs):
            line = server.stdout.readline()
            assert line, f"the server ended early: {''.join(stderr)[-3000:]}"
            event = json.loads(line)
            if event["event"] != "progress":
                terminal[event["id"]] = event
        server.stdin.write(json.dumps({"id": "end", "op": "shutdown"}) + "\n")
        server.stdin.flush()
        assert server.wait(timeout=60) == 0
    finally:
        watchdog.cancel()
        if server.poll() is None:
            server.kill()
    drain.join(timeout=10)
    failed = {list(inputs)[i]: event for i, event in terminal.items() if event["event"] != "result"}
    assert not failed, failed
    assert "Exception ignored" not in "".join(stderr)
    for name, path in inputs.items():
        check_output(path, outputs[name])
    assert_only(out_dir, [Path(path).name for path in outputs.values()])
