"""Drive the backend process: start it, send requests, route its events, and notice when it dies.

Uses `subprocess.Popen` and reader threads, not `QProcess`: Processing runs
algorithms on worker threads, and a QProcess belongs to the thread that made it.
One client serves the dock and Processing alike; its methods are safe to call
from any thread, and each call waits only on the events of its own request.
No QGIS import here, so the client can be used and tested without a GUI.
"""

from __future__ import annotations

import collections
import itertools
import json
import queue
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Any, Callable, Optional

from .interpreter import LaunchSpec

# The protocol version of backend/server.py this client speaks (the plugin never imports the backend).
PROTOCOL_VERSION = 1
TERMINAL_EVENTS = ("result", "error", "plan", "pong", "info", "bye")
# How the backend names a run's output while writing it (backend/raster.py, OutputRaster):
# a backend killed mid-run cannot remove it, so the client does.
PARTIAL_GLOB = ".{stem}.partial-*{suffix}"
STDERR_LINES_KEPT = 200
POLL_SECONDS = 0.05


class BackendError(Exception):
    """A request failed or the backend could not run; `kind` says which, the message says what to do."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


class BackendClient:
    """A long-lived backend process shared by every caller; restarted on the next request after a crash."""

    def __init__(self, launch: Callable[[], LaunchSpec], log: Optional[Callable[[str], None]] = None,
                 hello_timeout: float = 120.0) -> None:
        self._launch = launch
        self._log = log or (lambda line: None)
        self._hello_timeout = hello_timeout
        self._start_lock = threading.Lock()
        self._write_lock = threading.Lock()
        self._waiters_lock = threading.Lock()
        self._waiters: dict[int, "queue.Queue[dict[str, Any]]"] = {}
        self._ids = itertools.count(1)
        self._process: Optional[subprocess.Popen] = None
        self._threads: list[threading.Thread] = []
        self._stderr: collections.deque[str] = collections.deque(maxlen=STDERR_LINES_KEPT)
        self._hello: Optional[dict[str, Any]] = None
        self.starts = 0

    @property
    def hello(self) -> Optional[dict[str, Any]]:
        """The running backend's `hello` (versions, environment), or None when not started."""
        return self._hello if self.is_running() else None

    @property
    def pid(self) -> Optional[int]:
        """Process id of the running backend, or None."""
        return self._process.pid if self.is_running() else None

    def is_running(self) -> bool:
        """True while a backend process that said hello is alive."""
        process = self._process
        return process is not None and process.poll() is None and self._hello is not None

    def stderr_tail(self, lines: int = 20) -> str:
        """The backend's last stderr lines, for diagnostics."""
        return "\n".join(list(self._stderr)[-lines:])

    def start(self) -> dict[str, Any]:
        """Start the backend unless it runs already; returns its `hello`."""
        with self._start_lock:
            self._ensure_process()
            return self._hello

    def _ensure_process(self) -> tuple[subprocess.Popen, threading.Thread]:
        """The live process and its event reader, started if needed; call with the start lock held."""
        if not self.is_running():
            self._stop_process(timeout=2.0)
            self._start_process()
        return self._process, self._threads[0]

    def run(self, request: dict[str, Any], progress: Optional[Callable[[int, int], None]] = None,
            is_cancelled: Optional[Callable[[], bool]] = None) -> dict[str, Any]:
        """Run one super-resolution request; returns the `result` event.

        progress(done, total) is called per tile; when is_cancelled() turns true
        the backend is told to stop, and BackendError(kind="cancelled") follows.
        """
        return self._request("run", request, progress=progress, is_cancelled=is_cancelled)

    def plan(self, request: dict[str, Any]) -> dict[str, Any]:
        """Validate a request and get its output size, tiles, disk need and time estimate.

        Plans queue behind runs in the backend, so there is no time limit here;
        a backend that dies still ends the wait with a `crashed` error.
        """
        return self._request("plan", request)

    def ping(self, timeout: float = 10.0) -> dict[str, Any]:
        """Round-trip to the backend (answered even during a run)."""
        return self._request("ping", {}, timeout=timeout)

    def info(self, timeout: float = 10.0) -> dict[str, Any]:
        """The backend's versions, environment and what it is doing."""
        return self._request("info", {}, timeout=timeout)

    def stop(self, timeout: float = 5.0) -> None:
        """Ask the backend to exit, kill it if it does not, and join the reader threads."""
        with self._start_lock:
            self._stop_process(timeout)

    def _request(self, op: str, fields: dict[str, Any], progress: Optional[Callable[[int, int], None]] = None,
                 is_cancelled: Optional[Callable[[], bool]] = None,
                 timeout: Optional[float] = None) -> dict[str, Any]:
        with self._start_lock:
            process, reader = self._ensure_process()
        request_id = next(self._ids)
        events: "queue.Queue[dict[str, Any]]" = queue.Queue()
        with self._waiters_lock:
            self._waiters[request_id] = events
        deadline = None if timeout is None else time.monotonic() + timeout
        cancel_sent = False
        try:
            self._send({**fields, "id": request_id, "op": op}, process)
            while True:
                if is_cancelled is not None and not cancel_sent and is_cancelled():
                    self._send({"op": "cancel", "id": request_id}, process)
                    cancel_sent = True
                try:
                    event = events.get(timeout=POLL_SECONDS)
                except queue.Empty:
                    if not reader.is_alive() and events.empty():
                        # The process ended before this request was registered to hear about it.
                        raise BackendError("crashed", self._exit_message(process)) from None
                    if deadline is not None and time.monotonic() > deadline:
                        raise BackendError("timeout", f"the backend did not answer '{op}' within {timeout:g} s")
                    continue
                kind = event.get("event")
                if kind == "progress":
                    if progress is not None:
                        progress(int(event["done"]), int(event["total"]))
                elif kind == "error":
                    raise BackendError(event.get("kind", "internal"), event.get("message", "unknown error"))
                elif kind in TERMINAL_EVENTS:
                    return event
        except BackendError as error:
            if op == "run" and error.kind == "crashed":
                remove_partial_outputs(fields["output"])
            raise
        finally:
            with self._waiters_lock:
                self._waiters.pop(request_id, None)

    def _send(self, message: dict[str, Any], process: subprocess.Popen) -> None:
        line = (json.dumps(message) + "\n").encode("utf-8")
        try:
            with self._write_lock:
                process.stdin.write(line)
                process.stdin.flush()
        except (OSError, ValueError):
            raise BackendError("crashed", self._exit_message(process)) from None

    def _start_process(self) -> None:
        spec = self._launch()
        self._stderr.clear()
        self._hello = None
        try:
            process = subprocess.Popen(spec.argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                       stderr=subprocess.PIPE, cwd=spec.cwd, env=spec.env or None,
                                       creationflags=spec.creationflags)
        except (FileNotFoundError, PermissionError, NotADirectoryError) as error:
            raise BackendError("not_found", (
                f"the backend interpreter {spec.argv[0]!r} cannot be started ({error.strerror or error}). "
                "Choose an existing Python in the SlimDiffSR settings, or use 'Set up backend' in the panel."
            )) from None
        self._process = process
        self.starts += 1
        self._log(f"started backend: {' '.join(spec.argv)} (pid {process.pid})")
        greeting: "queue.Queue[dict[str, Any]]" = queue.Queue()
        self._threads = [
            threading.Thread(target=self._read_events, args=(process, greeting), name="slimdiffsr-events",
                             daemon=True),
            threading.Thread(target=self._read_stderr, args=(process,), name="slimdiffsr-stderr", daemon=True),
        ]
        for thread in self._threads:
            thread.start()
        try:
            hello = greeting.get(timeout=self._hello_timeout)
        except queue.Empty:
            self._stop_process(timeout=1.0)
            raise BackendError("timeout", f"the backend did not start within {self._hello_timeout:g} s; "
                                          f"its last messages:\n{self.stderr_tail()}") from None
        if hello.get("event") != "hello":
            self._stop_process(timeout=2.0)
            raise BackendError(*self._startup_failure(hello, spec.argv[0]))
        problem = protocol_problem(hello, spec.argv[0])
        if problem:
            self._stop_process(timeout=2.0)
            raise BackendError("incompatible", problem)
        self._hello = hello

    def _startup_failure(self, event: dict[str, Any], python: str) -> tuple[str, str]:
        """Turn a backend that died or complained before `hello` into an actionable message."""
        if event.get("kind") == "missing_dependency":
            missing = str(event.get("missing", ""))
            kind = "missing_torch" if missing.split(".")[0] == "torch" else "missing_dependency"
            return kind, event.get("message", "")
        tail = self.stderr_tail()
        if "No module named 'backend'" in tail:
            return "missing_backend", (
                f"the interpreter {python} does not have the SlimDiffSR backend installed. "
                "Use 'Set up backend' in the SlimDiffSR panel, or choose another interpreter in its settings.")
        if "No module named 'osgeo'" in tail:
            return "missing_dependency", (
                f"the interpreter {python} has no GDAL Python bindings (osgeo); the backend needs them. "
                "Use 'Set up backend', which builds on QGIS's own Python and its GDAL.")
        return event.get("kind", "crashed"), f"the backend failed to start: {event.get('message', '')}\n{tail}"

    def _read_events(self, process: subprocess.Popen, greeting: "queue.Queue[dict[str, Any]]") -> None:
        greeted = False
        for raw in process.stdout:
            try:
                event = json.loads(raw.decode("utf-8"))
            except ValueError:
                self._log(f"backend wrote a line that is not protocol: {raw[:200]!r}")
                continue
            if not greeted:
                greeting.put(event)
                greeted = True
                continue
            with self._waiters_lock:
                waiter = self._waiters.get(event.get("id"))
            if waiter is not None:
                waiter.put(event)
        try:
            process.wait(timeout=10.0)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        ended = {"event": "error", "kind": "crashed", "message": self._exit_message(process)}
        if not greeted:
            greeting.put(ended)
        with self._waiters_lock:
            waiters = list(self._waiters.values())
        for waiter in waiters:
            waiter.put(ended)

    def _read_stderr(self, process: subprocess.Popen) -> None:
        for raw in process.stderr:
            line = raw.decode("utf-8", errors="replace").rstrip()
            self._stderr.append(line)
            self._log(line)

    def _exit_message(self, process: subprocess.Popen) -> str:
        code = process.poll()
        if code is None:
            return "the backend is not running"
        return describe_exit(code, self.stderr_tail(8))

    def _stop_process(self, timeout: float) -> None:
        process = self._process
        if process is not None and process.poll() is None:
            try:
                with self._write_lock:
                    process.stdin.write(b'{"op": "shutdown", "id": 0}\n')
                    process.stdin.flush()
                process.wait(timeout=timeout)
            except (OSError, ValueError, subprocess.TimeoutExpired):
                process.kill()
                process.wait(timeout=timeout)
        for thread in self._threads:
            thread.join(timeout=timeout)
        if process is not None:
            for stream in (process.stdin, process.stdout, process.stderr):
                try:
                    stream.close()
                except OSError:
                    pass
        self._threads = []
        self._process = None
        self._hello = None


def remove_partial_outputs(output: str) -> list[str]:
    """Delete the half-written files a dead backend left beside `output`; returns their paths."""
    target = Path(output)
    removed = []
    for partial in target.parent.glob(PARTIAL_GLOB.format(stem=target.stem, suffix=target.suffix)):
        try:
            partial.unlink()
            removed.append(str(partial))
        except OSError:
            pass
    return removed


def protocol_problem(hello: dict[str, Any], python: str) -> str:
    """Why a backend that said hello cannot serve this plugin (another protocol version); empty if it can."""
    version = hello.get("protocol")
    if version == PROTOCOL_VERSION:
        return ""
    return (f"the backend in {python} speaks protocol {version} (package {hello.get('version', '?')}) but this "
            f"plugin speaks protocol {PROTOCOL_VERSION}; update the backend with 'Set up backend' in the panel")


def describe_exit(code: int, stderr_tail: str) -> str:
    """A user-facing sentence for how the backend process ended."""
    if code < 0:
        number = -code
        try:
            name = signal.Signals(number).name
        except ValueError:
            name = f"signal {number}"
        if name == "SIGKILL":
            return ("the backend process was killed (SIGKILL). The system does this when memory runs out: "
                    "try a smaller tile size or extent, or close other programs. It restarts on the next run.")
        return f"the backend process crashed ({name}); it restarts on the next run.\n{stderr_tail}"
    return f"the backend process exited unexpectedly (exit code {code}); it restarts on the next run.\n{stderr_tail}"


def cuda_notice(hello: Optional[dict[str, Any]], device: str) -> str:
    """A sentence when device "auto" ran on the CPU because the backend has no usable CUDA; empty otherwise."""
    environment = (hello or {}).get("environment", {})
    if device == "auto" and environment and not environment.get("cuda", False):
        return f"No usable GPU ({environment.get('cuda_detail', 'CUDA unavailable')}), so the CPU was used."
    return ""
