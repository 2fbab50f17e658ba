"""The backend process: JSON lines over stdin/stdout, runs one at a time, cancel and ping always answered.

Started by the QGIS plugin as `python -m backend.server` (or `slimdiffsr serve`).
Every message is one JSON object per line. Requests carry an `id` and an `op`:

    {"id": 1, "op": "run", "input": "/x.tif", "output": "/y.tif", "scale": 4, ...}
    {"id": 2, "op": "plan", ...same fields as run...}
    {"op": "cancel", "id": 1}          stops request 1 between tiles
    {"id": 3, "op": "ping"} / {"id": 4, "op": "info"} / {"id": 5, "op": "shutdown"}

The server answers with events carrying the request's `id`:

    {"event": "hello", "protocol": 1, "version": "...", "environment": {...}}   once, at start
    {"id": 1, "event": "progress", "done": 3, "total": 12}
    {"id": 1, "event": "result", "output": "/y.tif", "seconds": 3.2, ...}
    {"id": 1, "event": "error", "kind": "bad_input", "message": "..."}
    {"id": 2, "event": "plan", "width": ..., "seconds_estimate": ...}
    {"id": 3, "event": "pong"} / {"id": 4, "event": "info", ...} / {"id": 5, "event": "bye"}

`run` and `plan` wait in a queue and execute in arrival order on the main
thread; a reader thread answers `ping`, `info` and `cancel` at once, so they stay
responsive during a long run. Stdout belongs to the protocol alone: file
descriptor 1 is pointed at stderr at start-up, so a print or a C library's
message can never corrupt a protocol line.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import sys
import threading
import traceback
from dataclasses import asdict
from typing import Any, Callable, Optional, TextIO

from . import __version__
from slimdiffsr_qgis.contract import Cancelled, SlimDiffSRError
from slimdiffsr_qgis.contract import RunRequest

PROTOCOL_VERSION = 1
QUEUED_OPS = ("run", "plan")
EXIT_MISSING_DEPENDENCY = 3


class Server:
    """One backend session: reads requests from a text stream and writes events to another."""

    def __init__(self, out: TextIO, engine: Any, environment: dict[str, Any]) -> None:
        self._out = out
        self._engine = engine
        self._environment = environment
        self._write_lock = threading.Lock()
        self._state_lock = threading.Lock()
        self._queue: "queue.Queue[Optional[dict[str, Any]]]" = queue.Queue()
        self._cancelled: set[Any] = set()
        self._running: Any = None
        self._seconds_per_tile: dict[tuple[Any, ...], float] = {}

    def send(self, message: dict[str, Any]) -> None:
        """Write one event as one line; safe from any thread."""
        line = json.dumps(message, allow_nan=False, default=str)
        with self._write_lock:
            self._out.write(line + "\n")
            self._out.flush()

    def serve(self, lines: Callable[[], str]) -> None:
        """Greet, then handle requests until `shutdown` or the end of input."""
        self.send({"event": "hello", "protocol": PROTOCOL_VERSION, "version": __version__,
                   "pid": os.getpid(), "environment": self._environment})
        reader = threading.Thread(target=self._read, args=(lines,), name="slimdiffsr-stdin", daemon=True)
        reader.start()
        while True:
            message = self._queue.get()
            if message is None:
                return
            self._execute(message)

    def _read(self, lines: Callable[[], str]) -> None:
        while True:
            line = lines()
            if not line:
                # The client went away: nobody will read a result, so stop the run.
                self._stop_everything()
                return
            if not line.strip():
                continue
            try:
                message = json.loads(line)
                if not isinstance(message, dict):
                    raise ValueError("a request must be a JSON object")
            except ValueError as error:
                self.send({"id": None, "event": "error", "kind": "protocol",
                           "message": f"unreadable request line: {error}"})
                continue
            op = message.get("op")
            if op == "ping":
                self.send({"id": message.get("id"), "event": "pong"})
            elif op == "info":
                self.send(self._info(message.get("id")))
            elif op == "cancel":
                with self._state_lock:
                    self._cancelled.add(message.get("id"))
            elif op == "shutdown":
                self._stop_everything()
                self.send({"id": message.get("id"), "event": "bye"})
                return
            elif op in QUEUED_OPS:
                self._queue.put(message)
            else:
                self.send({"id": message.get("id"), "event": "error", "kind": "protocol",
                           "message": f"unknown op {op!r}; expected run, plan, cancel, ping, info or shutdown"})

    def _stop_everything(self) -> None:
        """Cancel the running request, answer the queued ones as cancelled, and end `serve`."""
        with self._state_lock:
            if self._running is not None:
                self._cancelled.add(self._running)
        while True:
            try:
                pending = self._queue.get_nowait()
            except queue.Empty:
                break
            if pending is not None:
                self._send_error(pending.get("id"), Cancelled("the backend is shutting down"))
        self._queue.put(None)

    def _info(self, request_id: Any) -> dict[str, Any]:
        with self._state_lock:
            running = self._running
        return {"id": request_id, "event": "info", "protocol": PROTOCOL_VERSION, "version": __version__,
                "pid": os.getpid(), "environment": self._environment, "running": running,
                "queued": self._queue.qsize()}

    def _execute(self, message: dict[str, Any]) -> None:
        request_id = message.get("id")
        with self._state_lock:
            if request_id in self._cancelled:
                self._cancelled.discard(request_id)
                cancelled_early = True
            else:
                self._running = request_id
                cancelled_early = False
        if cancelled_early:
            self._send_error(request_id, Cancelled("cancelled before it started"))
            return
        try:
            fields = {k: v for k, v in message.items() if k not in ("id", "op")}
            request = RunRequest.from_dict(fields)
            if message["op"] == "plan":
                self.send({"id": request_id, "event": "plan", **self._plan(request)})
            else:
                self.send({"id": request_id, "event": "result", **self._run(request_id, request)})
        except Exception as error:  # every failure becomes an error event; the server keeps serving
            self._send_error(request_id, error)
        finally:
            with self._state_lock:
                self._running = None
                self._cancelled.discard(request_id)

    def _plan(self, request: RunRequest) -> dict[str, Any]:
        plan = self._engine.plan(request)
        per_tile = self._seconds_per_tile.get(_timing_key(request))
        return {**asdict(plan), "seconds_estimate": None if per_tile is None else per_tile * plan.tiles}

    def _run(self, request_id: Any, request: RunRequest) -> dict[str, Any]:
        def progress(done: int, total: int) -> None:
            self.send({"id": request_id, "event": "progress", "done": done, "total": total})

        def should_cancel() -> bool:
            with self._state_lock:
                return request_id in self._cancelled

        result = self._engine.run(request, progress=progress, should_cancel=should_cancel)
        if result.tiles:
            self._seconds_per_tile[_timing_key(request)] = result.seconds / result.tiles
        return asdict(result)

    def _send_error(self, request_id: Any, error: BaseException) -> None:
        self.send({"id": request_id, "event": "error", **describe_error(error)})


def describe_error(error: BaseException) -> dict[str, str]:
    """The `kind` and user-facing `message` of an exception; unexpected ones are logged with traceback."""
    if isinstance(error, SlimDiffSRError):
        return {"kind": error.kind, "message": str(error)}
    if isinstance(error, MemoryError) or type(error).__name__ == "OutOfMemoryError":
        return {"kind": "out_of_memory",
                "message": "the backend ran out of memory; try a smaller tile size, or the CPU device"}
    traceback.print_exception(type(error), error, error.__traceback__, file=sys.stderr)
    return {"kind": "internal", "message": f"internal error in the backend: {type(error).__name__}: {error}"}


def _timing_key(request: RunRequest) -> tuple[Any, ...]:
    return (request.weights, request.model, request.device, request.tile, request.scale)


def protocol_stream() -> TextIO:
    """Keep a private handle on the real stdout and point fd 1 (and `sys.stdout`) at stderr."""
    sys.stdout.flush()
    private = os.fdopen(os.dup(1), "w", encoding="utf-8", newline="\n")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    return private


def main() -> int:
    """Entry point of `python -m backend.server` and `slimdiffsr serve`; returns the exit code."""
    out = protocol_stream()
    # The engine logs its choices (device, normalisation, model) at INFO; on stderr
    # they reach the plugin's log panel. basicConfig keeps `slimdiffsr serve`'s own set-up.
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
    try:
        # Imported here, not at module top, so a missing torch becomes a protocol
        # message the plugin can show instead of a bare traceback.
        from .engine import Engine, describe_environment
    except ImportError as error:
        missing = getattr(error, "name", None) or str(error)
        message = (f"the backend interpreter {sys.executable} cannot import {missing!r} ({error}); "
                   "install PyTorch and the slimdiffsr package into it, or use 'Set up backend' in QGIS")
        out.write(json.dumps({"id": None, "event": "error", "kind": "missing_dependency",
                              "missing": missing, "message": message}) + "\n")
        out.flush()
        return EXIT_MISSING_DEPENDENCY
    server = Server(out, Engine(), describe_environment())
    server.serve(sys.stdin.readline)
    # The stdin reader is a daemon thread still blocked in readline; a normal
    # interpreter shutdown can then abort the process ("could not acquire lock for
    # stdin at interpreter shutdown"), which the client would report as a crash.
    # Every output is committed by now, so leave without finalisation.
    out.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    sys.exit(main())
