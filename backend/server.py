"""The backend process: JSON lines over stdin/stdout, runs one at a time, cancel and ping always answered.

Started by the QGIS plugin as `python -m backend.server` (or `slimdiffsr serve`).
Every message is one JSON object per line. Requests carry an `id` (a string or an
integer, or absent) and an `op` (contract.OPS):

    {"id": 1, "op": "run", "input": "/x.tif", "output": "/y.tif", "scale": 4, ...}
    {"id": 2, "op": "plan", ...same fields as run...}
    {"op": "cancel", "id": 1}          stops request 1 between tiles, or drops it from the queue
    {"id": 3, "op": "ping"} / {"id": 4, "op": "info"} / {"id": 5, "op": "shutdown"}

The server answers with events carrying the request's `id`:

    {"event": "hello", "protocol": 2, "version": "...", "environment": {...}}   once, at start
    {"id": 1, "event": "progress", "done": 3, "total": 12}
    {"id": 1, "event": "result", "output": "/y.tif", "seconds": 3.2, ...}
    {"id": 1, "event": "error", "kind": "bad_input", "message": "..."}
    {"id": 2, "event": "plan", "width": ..., "seconds_estimate": ...}
    {"id": 3, "event": "pong"} / {"id": 4, "event": "info", ...} / {"id": 5, "event": "bye"}

Every line that is not a valid request gets one `error` event (kind `protocol`
for a line that is not a request at all: not UTF-8, not JSON, not an object, a bad
id or op; `bad_input` for a run or plan whose fields the contract refuses), with
the request's id when it has a valid one, else null, and the server keeps serving.
A `cancel` for an id that is neither running nor queued is ignored (logged on
stderr): it cannot touch a later request that reuses the id.

`run` and `plan` are checked on arrival, then wait in a queue and execute in
arrival order on the main thread; a reader thread answers `ping`, `info` and
`cancel` at once, so they stay responsive during a long run. When stdin closes
(the client went away) or `shutdown` arrives, the running request is cancelled
and the process leaves within STOP_SECONDS, even if the run does not stop in
time. Stdout belongs to the protocol alone: file descriptor 1 is pointed at
stderr at start-up, so a print or a C library's message can never corrupt a
protocol line.
"""

from __future__ import annotations

import collections
import importlib
import json
import logging
import math
import os
import reprlib
import sys
import threading
import traceback
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Optional, TextIO

from . import __version__
from slimdiffsr_qgis.contract import KIND_BAD_INPUT, KIND_INTERNAL, KIND_MISSING_DEPENDENCY, KIND_OUT_OF_MEMORY
from slimdiffsr_qgis.contract import KIND_PROTOCOL, OPS, PROTOCOL_VERSION, QUEUED_OPS
from slimdiffsr_qgis.contract import BadInput, Cancelled, RunRequest, SlimDiffSRError, request_id

log = logging.getLogger("slimdiffsr")

EXIT_MISSING_DEPENDENCY = 3
EXIT_STUCK = 1
"""Exit code when a run did not stop within STOP_SECONDS of the end of input (its partial file may remain
until the next run to the same target removes it)."""
MAX_LINE_BYTES = 1 << 20
"""A request is a few hundred bytes; a longer line is refused without being held in memory."""
STOP_SECONDS = 1.5
"""How long a cancelled run may take to stop once the input has ended, before the process leaves anyway."""

# What the backend needs beyond the standard library, with what to do when one is missing or broken.
# Torch first: it is the dependency a fresh interpreter most often lacks.
DEPENDENCIES = (
    ("torch", "PyTorch", "pip install torch into it"),
    ("osgeo.gdal", "the GDAL Python bindings (osgeo)",
     "use an interpreter that has them (QGIS's own Python, or one with python3-gdal or conda's gdal; "
     "PyPI has no GDAL wheels)"),
    ("numpy", "NumPy", "pip install 'numpy<2' into it"),
    ("safetensors", "safetensors", "pip install safetensors into it"),
)
SET_UP_HINT = "or use 'Set up backend' in the SlimDiffSR panel in QGIS"
OWN_PACKAGES = ("backend", "slimdiffsr_qgis")


class ProtocolError(SlimDiffSRError):
    """A line that is not a request the protocol knows: not UTF-8, not JSON, not an object, bad id or op."""

    kind = KIND_PROTOCOL


@dataclass
class Job:
    """A checked run or plan request, waiting or running."""

    id: Any
    op: str
    request: RunRequest
    cancelled: threading.Event = field(default_factory=threading.Event)


class Server:
    """One backend session: reads request lines (bytes) from one stream and writes events to another."""

    def __init__(self, out: TextIO, engine: Any, environment: dict[str, Any]) -> None:
        self._out = out
        self._engine = engine
        self._environment = environment
        self._write_lock = threading.Lock()
        self._state = threading.Condition()
        self._jobs: "collections.deque[Job]" = collections.deque()
        self._running: Optional[Job] = None
        self._closing = False
        self._out_gone = False
        self._finished = threading.Event()
        # Seconds per model pass over one tile, by model and tile size: a plan's time estimate.
        self._seconds_per_step: dict[tuple[Any, ...], float] = {}

    def send(self, message: dict[str, Any]) -> None:
        """Write one event as one line; safe from any thread. A client that is gone ends the session."""
        try:
            line = json.dumps(message, allow_nan=False, default=str)
        except ValueError as error:  # a non-finite number in an answer: say so rather than break the line
            line = json.dumps({"id": message.get("id"), "event": "error", "kind": KIND_INTERNAL,
                               "message": f"internal error in the backend: cannot encode the answer ({error})"})
        with self._write_lock:
            if self._out_gone:
                return
            try:
                self._out.write(line + "\n")
                self._out.flush()
            except (OSError, ValueError):  # broken pipe, or the stream was closed
                self._out_gone = True
        if self._out_gone:
            self.stop("the client stopped reading the backend's output")

    def serve(self, read_line: Callable[[int], bytes]) -> None:
        """Greet, then run queued requests until `shutdown` or the end of input.

        read_line(limit) returns the next line as bytes (at most `limit` of them), b"" at the end of input.
        """
        self.send({"event": "hello", "protocol": PROTOCOL_VERSION, "version": __version__,
                   "pid": os.getpid(), "environment": self._environment})
        reader = threading.Thread(target=self._read, args=(read_line,), name="slimdiffsr-stdin", daemon=True)
        reader.start()
        try:
            while True:
                job = self._next_job()
                if job is None:
                    return
                self._execute(job)
        finally:
            self._finished.set()

    def stop(self, reason: str) -> None:
        """Cancel the running request, answer the queued ones as cancelled, and let `serve` return."""
        with self._state:
            if self._closing:
                return
            self._closing = True
            if self._running is not None:
                self._running.cancelled.set()
            dropped = list(self._jobs)
            self._jobs.clear()
            self._state.notify_all()
        for job in dropped:
            self._send_error(job.id, Cancelled(reason))

    # The reader thread: nothing a line holds may end it; only the end of input or `shutdown` does.

    def _read(self, read_line: Callable[[int], bytes]) -> None:
        while True:
            try:
                line = read_line(MAX_LINE_BYTES + 1)
                if len(line) > MAX_LINE_BYTES and not line.endswith(b"\n"):
                    _skip_rest_of_line(read_line)
                    self._send_error(None, ProtocolError(f"a request line is longer than {MAX_LINE_BYTES} bytes"))
                    continue
            except Exception as error:  # an unreadable stdin is as good as a closed one
                log.warning("cannot read the backend's input (%s); stopping", error)
                line = b""
            if not line:
                self.stop("the client closed the backend's input")
                break
            try:
                if not self._handle(line):
                    break
            except Exception as error:  # a bug in handling one line must not cost the session
                self._send_error(None, error)
        self._leave_in_time()

    def _handle(self, line: bytes) -> bool:
        """Answer or queue one line; False after `shutdown`."""
        if not line.strip():
            return True
        try:
            message = _parse(line)
            rid = _id_of(message)
        except SlimDiffSRError as error:
            self._send_error(None, error)
            return True
        try:
            return self._dispatch(rid, message)
        except Exception as error:
            self._send_error(rid, error)
            return True

    def _dispatch(self, rid: Any, message: dict[str, Any]) -> bool:
        op = message.get("op")
        if not isinstance(op, str) or op not in OPS:
            raise ProtocolError(f"unknown op {reprlib.repr(op)}; expected one of {', '.join(OPS)}")
        fields = {key: value for key, value in message.items() if key not in ("id", "op")}
        if op in QUEUED_OPS:
            self._enqueue(Job(rid, op, _request(fields)))
            return True
        if fields:
            raise ProtocolError(f"{op} takes only 'id' and 'op'; unexpected field(s): "
                                f"{reprlib.repr(', '.join(sorted(fields)))}")
        if op == "ping":
            self.send({"id": rid, "event": "pong"})
        elif op == "info":
            self.send(self._info(rid))
        elif op == "cancel":
            self._cancel(rid)
        else:  # shutdown
            self.stop("the backend is shutting down")
            self.send({"id": rid, "event": "bye"})
            return False
        return True

    def _enqueue(self, job: Job) -> None:
        with self._state:
            if not self._closing:
                self._jobs.append(job)
                self._state.notify_all()
                return
        self._send_error(job.id, Cancelled("the backend is shutting down"))

    def _cancel(self, rid: Any) -> None:
        if rid is None:
            raise ProtocolError("cancel needs the id of the request to stop")
        with self._state:
            running = self._running is not None and self._running.id == rid
            if running:
                self._running.cancelled.set()
            dropped = [job for job in self._jobs if job.id == rid]
            for job in dropped:
                self._jobs.remove(job)
        for job in dropped:
            self._send_error(job.id, Cancelled("cancelled before it started"))
        if not running and not dropped:
            log.info("cancel for request %s ignored: it is neither running nor queued", reprlib.repr(rid))

    def _leave_in_time(self) -> None:
        """After the end of input or `shutdown`: give the cancelled run STOP_SECONDS, then leave regardless,
        so a client that went away never leaves a backend behind."""
        if not self._finished.wait(STOP_SECONDS):
            log.warning("the running request did not stop within %.1f s of the end of input; exiting", STOP_SECONDS)
            sys.stderr.flush()
            os._exit(EXIT_STUCK)

    def _info(self, rid: Any) -> dict[str, Any]:
        with self._state:
            running = self._running.id if self._running is not None else None
            queued = len(self._jobs)
        return {"id": rid, "event": "info", "protocol": PROTOCOL_VERSION, "version": __version__,
                "pid": os.getpid(), "environment": self._environment, "running": running, "queued": queued}

    # The main thread: queued requests, one at a time.

    def _next_job(self) -> Optional[Job]:
        with self._state:
            while not self._jobs and not self._closing:
                self._state.wait()
            if self._closing:
                return None
            self._running = self._jobs.popleft()
            return self._running

    def _execute(self, job: Job) -> None:
        try:
            if job.op == "plan":
                self.send({"id": job.id, "event": "plan", **self._plan(job.request)})
            else:
                self.send({"id": job.id, "event": "result", **self._run(job)})
        except Exception as error:  # every failure becomes an error event; the server keeps serving
            self._send_error(job.id, error)
        finally:
            with self._state:
                self._running = None

    def _plan(self, request: RunRequest) -> dict[str, Any]:
        plan = self._engine.plan(request)
        per_step = self._seconds_per_step.get(_timing_key(request))
        return {**asdict(plan), "seconds_estimate": None if per_step is None else per_step * plan.steps}

    def _run(self, job: Job) -> dict[str, Any]:
        def progress(done: int, total: int) -> None:
            self.send({"id": job.id, "event": "progress", "done": done, "total": total})

        if job.cancelled.is_set():
            raise Cancelled("cancelled before it started")
        result = self._engine.run(job.request, progress=progress, should_cancel=job.cancelled.is_set)
        if result.steps:
            self._seconds_per_step[_timing_key(job.request)] = result.seconds / result.steps
        return asdict(result)

    def _send_error(self, rid: Any, error: BaseException) -> None:
        self.send({"id": rid, "event": "error", **describe_error(error)})


def _parse(line: bytes) -> dict[str, Any]:
    """One request line as a JSON object; ProtocolError for anything else."""
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError as error:
        raise ProtocolError(f"a request line must be UTF-8 text; byte {error.start} is not") from None
    try:
        message = json.loads(text, parse_constant=_refuse_constant, parse_float=_finite_float)
    except (ValueError, RecursionError) as error:  # JSONDecodeError is a ValueError; so is a 5000-digit number
        raise ProtocolError(f"unreadable request line: {reprlib.repr(str(error))}") from None
    if not isinstance(message, dict):
        raise ProtocolError(f"a request must be a JSON object, got {type(message).__name__}")
    return message


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _finite_float(text: str) -> float:
    number = float(text)
    if not math.isfinite(number):
        raise ValueError(f"number {reprlib.repr(text)} is too large")
    return number


def _skip_rest_of_line(read_line: Callable[[int], bytes]) -> None:
    """Read and drop the rest of an over-long line, a bounded piece at a time."""
    while True:
        piece = read_line(MAX_LINE_BYTES)
        if not piece or piece.endswith(b"\n"):
            return


def _id_of(message: dict[str, Any]) -> Any:
    try:
        return request_id(message.get("id"))
    except BadInput as error:
        raise ProtocolError(str(error)) from None


def _request(fields: dict[str, Any]) -> RunRequest:
    """The run request in `fields`; a value the contract cannot even compare is bad input, not a crash."""
    try:
        return RunRequest.from_dict(fields)
    except (TypeError, ValueError, OverflowError) as error:
        raise BadInput(f"the request's fields cannot be used: {reprlib.repr(str(error))}") from None


def describe_error(error: BaseException) -> dict[str, str]:
    """The `kind` and user-facing `message` of an exception; unexpected ones are logged with traceback."""
    if isinstance(error, SlimDiffSRError):
        return {"kind": error.kind, "message": str(error)}
    if isinstance(error, MemoryError) or type(error).__name__ == "OutOfMemoryError":
        return {"kind": KIND_OUT_OF_MEMORY,
                "message": "the backend ran out of memory; try a smaller tile size, or the CPU device"}
    traceback.print_exception(type(error), error, error.__traceback__, file=sys.stderr)
    return {"kind": KIND_INTERNAL, "message": f"internal error in the backend: {type(error).__name__}: {error}"}


def _timing_key(request: RunRequest) -> tuple[Any, ...]:
    return (request.weights, request.model, request.device, request.tile, request.scale)


def missing_dependency(error: Optional[ImportError] = None) -> Optional[tuple[str, str]]:
    """(the missing module, a message naming it and what to do), or None when everything imports.

    Tries each of DEPENDENCIES, so the message names exactly what is missing or broken; `error`
    is a later ImportError of the backend itself, for a module outside that list.
    """
    python = sys.executable
    problems = []
    for module, label, advice in DEPENDENCIES:
        try:
            importlib.import_module(module)
        except ImportError as failure:
            state = ("is not installed" if isinstance(failure, ModuleNotFoundError)
                     else f"is installed but fails to load ({failure})")
            problems.append((module.split(".")[0], f"{label} {state}: {advice}"))
    if problems:
        return problems[0][0], (f"the backend interpreter {python} cannot run SlimDiffSR: "
                                f"{'; '.join(text for _, text in problems)}; {SET_UP_HINT}")
    if error is None:
        return None
    name = (error.name or "").split(".")[0]
    if name in OWN_PACKAGES:
        return "slimdiffsr", (f"the slimdiffsr package in {python} is incomplete ({error}); reinstall it, "
                              f"{SET_UP_HINT}")
    return name or str(error), (f"the backend interpreter {python} cannot import {name or 'a module'} ({error}); "
                                f"install it into that interpreter, {SET_UP_HINT}")


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
    # Imported here, not at module top, so a missing dependency becomes a protocol
    # message the plugin can show instead of a bare traceback.
    problem = missing_dependency()
    if problem is None:
        try:
            from .engine import Engine, describe_environment

            engine, environment = Engine(), describe_environment()
        except ImportError as error:
            problem = missing_dependency(error)
    if problem is not None:
        missing, message = problem
        out.write(json.dumps({"id": None, "event": "error", "kind": KIND_MISSING_DEPENDENCY,
                              "missing": missing, "message": message}) + "\n")
        out.flush()
        return EXIT_MISSING_DEPENDENCY
    Server(out, engine, environment).serve(sys.stdin.buffer.readline)
    # The stdin reader is a daemon thread still blocked in readline; a normal
    # interpreter shutdown can then abort the process ("could not acquire lock for
    # stdin at interpreter shutdown"), which the client would report as a crash.
    # Every output is committed by now, so leave without finalisation.
    out.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    sys.exit(main())
