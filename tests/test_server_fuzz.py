"""The backend survives hostile input: hundreds of malformed lines around a real run, each answered once.

A seeded generator writes lines of every kind a broken or hostile client could
send (invalid UTF-8, invalid JSON, non-objects, NaN and Infinity, huge numbers,
deep nesting, bad ids, unknown ops, random values of every type in every request
field). They are sent one at a time while a run of a tiny shipped-like student is
in progress, and each must get exactly one `error` event (with its id when the id
is valid, else null) before the next is sent; valid pings interleaved among them
must be answered, the run must produce the right output, and the process must end
within 2 s of its input closing.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from plugin_fixtures import one_thread_backends  # noqa: F401 (a fixture, used by name)
from plugin_fixtures import write_rgb, write_tiny_shipped_like_weights
from rasters import read_raster
from server_helpers import RawServer
from slimdiffsr_qgis.contract import KIND_BAD_INPUT, KIND_PROTOCOL, OPS, SlimDiffSRError, RunRequest, request_id

pytestmark = pytest.mark.usefixtures("one_thread_backends")
SEED = 20250115
HOSTILE_LINES = 240
RUN_ID = "the-run"
FIELDS = ("input", "output", "scale", "extent", "extent_crs", "bands", "rgb", "weights", "model", "device", "tile",
          "overlap", "normalisation", "output_dtype", "overwrite")


@dataclass
class Line:
    """A line to send and the answer it must get: an error of one of `kinds` carrying `answer_id`."""

    raw: bytes
    answer_id: Any
    kinds: tuple[str, ...]


def random_value(rng: random.Random, depth: int = 0) -> Any:
    """Any JSON value: scalars of every type and size, text with odd characters, nested lists and objects."""
    choice = rng.randrange(9 if depth < 4 else 6)
    if choice == 0:
        return None
    if choice == 1:
        return rng.random() < 0.5
    if choice == 2:
        return rng.choice([0, -1, 1, 3, 7, 2**31, -2**63, 2**53 + 1, 10**30, rng.randrange(-10**6, 10**6)])
    if choice == 3:
        return rng.choice([0.5, -1e308, 1e308, 2.5e-300, rng.uniform(-1e6, 1e6)])
    if choice in (4, 5):
        alphabet = "ab/\\.:,\"'{}[]\t\u00e9\u4e2d\U0001f600\x00\x1b-*?"
        return "".join(rng.choice(alphabet) for _ in range(rng.randrange(0, 12)))
    if choice == 6:
        return [random_value(rng, depth + 1) for _ in range(rng.randrange(0, 4))]
    if choice == 7:
        return {random_key(rng): random_value(rng, depth + 1) for _ in range(rng.randrange(0, 4))}
    return rng.choice([[1, 2, 3], [4, 3, 2], [0, 0, 10, 10], "EPSG:4326", "fixed:0,255", "cpu", "bicubic"])


def random_key(rng: random.Random) -> str:
    return rng.choice(FIELDS + ("id", "op", "", "x" * 40, "\u00e9t\u00e9", "__proto__"))


def valid_id(rng: random.Random, index: int) -> Any:
    return f"hostile-{index}" if rng.random() < 0.5 else 100_000 + index


def bad_id(rng: random.Random) -> Any:
    return rng.choice([[1], {"a": 1}, 1.5, True, False, 2**60, -2**54, [], {}, [[["deep"]]], 0.0])


def contract_refuses(fields: dict[str, Any]) -> bool:
    """Whether a run request with these fields is refused on arrival (so it is answered before the next line)."""
    try:
        RunRequest.from_dict(fields)
    except (SlimDiffSRError, TypeError, ValueError, OverflowError):
        return True
    return False


def hostile_run(rng: random.Random, index: int, base: dict[str, Any]) -> Line:
    """A run or plan whose fields the contract refuses: random values for random fields, unknown fields."""
    while True:
        fields = dict(base)
        for _ in range(rng.randrange(1, 4)):
            name = rng.choice(FIELDS + ("colour", "id2"))
            if rng.random() < 0.1:
                fields.pop(name, None)
            else:
                fields[name] = random_value(rng)
        if contract_refuses(fields):
            break
    rid = valid_id(rng, index)
    message = {"id": rid, "op": rng.choice(["run", "plan"]), **fields}
    return Line(json.dumps(message).encode() + b"\n", rid, (KIND_BAD_INPUT,))


def hostile_line(rng: random.Random, index: int, base: dict[str, Any]) -> Line:
    """One malformed or hostile line of a kind chosen at random, and the answer it must get."""
    kind = rng.randrange(12)
    protocol = (KIND_PROTOCOL,)
    if kind == 0:  # not UTF-8
        junk = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 40))).replace(b"\n", b" ")
        return Line(b"\xff" + junk + b"\n", None, protocol)
    if kind == 1:  # not JSON
        text = rng.choice(['{"id": 1, "op": "ping"', "{'id': 1}", "ping", "{]", '{"id": 1,, "op": "ping"}',
                           '"unterminated', "{\"op\": \"run\"} trailing", "0x10", "[1, 2,]", "nul"])
        return Line(text.encode() + b"\n", None, protocol)
    if kind == 2:  # valid JSON, not an object
        value = rng.choice([None, 1, -2.5, "run", [{"id": 1, "op": "ping"}], [], True])
        return Line(json.dumps(value).encode() + b"\n", None, protocol)
    if kind == 3:  # NaN, Infinity or a number beyond any float, anywhere in the line
        constant = rng.choice(["NaN", "Infinity", "-Infinity", "1e999", "-1e400"])
        where = rng.choice(['{"id": %s, "op": "ping"}', '{"id": 1, "op": "run", "tile": %s}',
                            '{"id": 1, "op": "run", "extent": [0, 0, %s, 1]}'])
        return Line((where % constant).encode() + b"\n", None, protocol)
    if kind == 4:  # an integer too long for Python to read
        return Line(b'{"id": 1, "op": "ping", "x": ' + b"9" * 5000 + b"}\n", None, protocol)
    if kind == 5:  # nesting deeper than the parser goes
        depth = rng.choice([5000, 100_000])
        return Line(b'{"id": 1, "op": "run", "input": ' + b"[" * depth + b"]" * depth + b"}\n", None, protocol)
    if kind == 6:  # an id of the wrong type, on any op
        message = {"id": bad_id(rng), "op": rng.choice(OPS)}
        return Line(json.dumps(message).encode() + b"\n", None, protocol)
    if kind == 7:  # an unknown or missing op
        rid = valid_id(rng, index)
        message = {"id": rid}
        if rng.random() < 0.8:
            message["op"] = rng.choice(["dance", "RUN", "", " ping", None, 1, ["run"], {"op": "run"}])
        return Line(json.dumps(message).encode() + b"\n", rid, protocol)
    if kind == 8:  # fields a ping, info or cancel does not take
        rid = valid_id(rng, index)
        message = {"id": rid, "op": rng.choice(["ping", "info", "cancel"]), random_key(rng) + "!": random_value(rng)}
        return Line(json.dumps(message).encode() + b"\n", rid, protocol)
    if kind == 9:  # a cancel without the id of what to cancel
        return Line(b'{"op": "cancel"}\n', None, protocol)
    if kind == 10:  # nested objects as a whole request's fields
        rid = valid_id(rng, index)
        message = {"id": rid, "op": "run", **{name: {"nested": random_value(rng, 2)} for name in ("input", "output")}}
        return Line(json.dumps(message).encode() + b"\n", rid, (KIND_BAD_INPUT,))
    return hostile_run(rng, index, base)


def hostile_lines(rng: random.Random, count: int, base: dict[str, Any]) -> list[Line]:
    lines = [hostile_line(rng, index, base) for index in range(count)]
    # Two more, always: a line over the server's length limit, and one that is a single huge JSON string.
    lines.append(Line(b'{"id": 1, "op": "ping", "pad": "' + b"x" * (2 << 20) + b'"}\n', None, (KIND_PROTOCOL,)))
    lines.append(Line(json.dumps({"id": 7, "op": "run", "input": "\u00e9" * 4000}).encode() + b"\n", 7,
                      (KIND_BAD_INPUT,)))
    return lines


def answer(server: RawServer, run_events: list[dict[str, Any]]) -> dict[str, Any]:
    """The first event that is not about the background run; the run's events go to `run_events`."""
    while True:
        event = server.event()
        if event.get("id") != RUN_ID:
            return event
        run_events.append(event)


def test_hundreds_of_hostile_lines_are_each_answered_while_a_real_run_completes(tmp_path: Path):
    raster = write_rgb(tmp_path / "in.tif", 96, 64)
    weights = write_tiny_shipped_like_weights(tmp_path / "student.safetensors")
    output = tmp_path / "out.tif"
    base = {"input": raster, "output": str(tmp_path / "never.tif"), "weights": weights}
    rng = random.Random(SEED)
    lines = hostile_lines(rng, HOSTILE_LINES, base)
    assert len(lines) >= 200
    server = RawServer()
    try:
        assert server.event()["event"] == "hello"
        server.send({"id": RUN_ID, "op": "run", "input": raster, "output": str(output), "weights": weights,
                     "tile": 32, "overlap": 4})
        run_events: list[dict[str, Any]] = []
        for index, line in enumerate(lines):
            server.send_raw(line.raw)
            error = answer(server, run_events)
            problem = f"line {index} {line.raw[:120]!r} got {error}"
            assert error["event"] == "error" and error["kind"] in line.kinds, problem
            assert error["id"] == line.answer_id, problem
            assert error["message"] and "\n" not in error["message"], problem
            if index % 10 == 0:
                server.send({"id": f"ping-{index}", "op": "ping"})
                assert answer(server, run_events) == {"id": f"ping-{index}", "event": "pong"}
        if not run_events or run_events[-1]["event"] not in ("result", "error"):
            run_events += server.until(RUN_ID)
        assert any(event["event"] == "progress" for event in run_events)
        assert run_events[-1]["event"] == "result", run_events[-1]
        assert run_events[-1]["width"] == 96 * 4 and run_events[-1]["height"] == 64 * 4
        values, *_ = read_raster(str(output))
        assert values.shape == (3, 64 * 4, 96 * 4)
        assert not (tmp_path / "never.tif").exists()
        assert server.seconds_to_exit_after_closing_stdin() < 2.0
        assert server.process.returncode == 0
        assert "Traceback" not in server.log(), server.log()[-3000:]
    finally:
        server.close()


def test_the_hostile_lines_are_the_same_for_the_same_seed():
    base = {"input": "/in.tif", "output": "/out.tif"}
    first = hostile_lines(random.Random(SEED), 50, base)
    second = hostile_lines(random.Random(SEED), 50, base)
    assert [line.raw for line in first] == [line.raw for line in second]
    assert {line.answer_id is None for line in first} == {True, False}
    assert all(line.answer_id is None or request_id(line.answer_id) == line.answer_id for line in first)
