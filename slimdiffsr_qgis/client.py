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

from .contract import (KIND_CANCELLED, KIND_INTERNAL, KIND_MISSING_DEPENDENCY, KIND_OUT_OF_MEMORY,
                       KIND_PROTOCOL, PROTOCOL_VERSION, TERMINAL_EVENTS, RunRequest, partial_glob, partial_owner)
from .interpreter import InterpreterNotFound, LaunchSpec

STDERR_LINES_KEPT = 200
POLL_SECONDS = 0.05


class BackendError(Exception):
    """A request failed or the backend could not run; `kind` (one of the contract's ERROR_KINDS) says which,
    the message says what to do."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind

    @property
    def cancelled(self) -> bool:
        """True when the caller asked to stop: not a failure to report as one."""
        return self.kind == KIND_CANCELLED


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
        self._closed = False
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

    def run(self, request: RunRequest, progress: Optional[Callable[[int, int], None]] = None,
            is_cancelled: Optional[Callable[[], bool]] = None) -> dict[str, Any]:
        """Run one super-resolution request; returns the `result` event.

        progress(done, total) is called per tile pass; when is_cancelled() turns true
        the backend is told to stop, and BackendError(kind="cancelled") follows.
        """
        return self._request("run", request.to_dict(), progress=progress, is_cancelled=is_cancelled)

    def plan(self, request: RunRequest) -> dict[str, Any]:
        """Validate a request and get its output size, tiles, disk need and time estimate.

        Plans queue behind runs in the backend, so there is no time limit here;
        a backend that dies still ends the wait with an error.
        """
        return self._request("plan", request.to_dict())

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

    def close(self, timeout: float = 5.0) -> None:
        """Stop the backend for good (the plugin unloads): later requests fail, and a start under way is cut
        short rather than waited for, since it may wait up to `hello_timeout` for the backend's hello."""
        self._closed = True
        if not self._start_lock.acquire(blocking=False):
            process = self._process
            if process is not None and self._hello is None:
                process.kill()
            self._start_lock.acquire()
        try:
            self._stop_process(timeout)
        finally:
            self._start_lock.release()

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
                        raise self._died(process) from None
                    if deadline is not None and time.monotonic() > deadline:
                        raise BackendError(KIND_INTERNAL, f"the backend did not answer '{op}' within {timeout:g} s")
                    continue
                kind = event.get("event")
                if kind == "progress":
                    if progress is not None:
                        progress(int(event["done"]), int(event["total"]))
                elif kind == "error":
                    raise BackendError(event.get("kind", KIND_INTERNAL), event.get("message", "unknown error"))
                elif kind in TERMINAL_EVENTS:
                    return event
        finally:
            if op == "run" and process.poll() is not None:
                # A dead backend cannot remove what it was writing; the client does.
                remove_partial_outputs(fields["output"], process.pid)
            with self._waiters_lock:
                self._waiters.pop(request_id, None)

    def _send(self, message: dict[str, Any], process: subprocess.Popen) -> None:
        line = (json.dumps(message) + "\n").encode("utf-8")
        try:
            with self._write_lock:
                process.stdin.write(line)
                process.stdin.flush()
        except (OSError, ValueError):
            raise self._died(process) from None

    def _died(self, process: subprocess.Popen) -> BackendError:
        """The error for a backend that ended under a request: killed by the system (memory) or crashed."""
        code = process.poll()
        kind = KIND_OUT_OF_MEMORY if code == -signal.SIGKILL else KIND_INTERNAL
        return BackendError(kind, self._exit_message(process))

    def _start_process(self) -> None:
        if self._closed:
            raise BackendError(KIND_CANCELLED, "the SlimDiffSR plugin is unloading; the backend is not started")
        try:
            spec = self._launch()
        except InterpreterNotFound as error:
            raise BackendError(KIND_MISSING_DEPENDENCY, str(error)) from None
        self._stderr.clear()
        self._hello = None
        try:
            process = subprocess.Popen(spec.argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                       stderr=subprocess.PIPE, cwd=spec.cwd, env=spec.env or None,
                                       creationflags=spec.creationflags)
        except (FileNotFoundError, PermissionError, NotADirectoryError) as error:
            raise BackendError(KIND_MISSING_DEPENDENCY, (
                f"the backend interpreter {spec.argv[0]!r} cannot be started ({error.strerror or error}). "
                "Choose an existing Python in the SlimDiffSR settings, or use 'Set up backend' in the panel."
            )) from None
        self._process = process
        if self._closed:
            # close() ran while this start launched the process, and may not have seen it to kill it.
            process.kill()
            self._stop_process(timeout=1.0)
            raise BackendError(KIND_CANCELLED, "the SlimDiffSR plugin is unloading; the backend is not started")
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
            raise BackendError(KIND_INTERNAL, f"the backend did not start within {self._hello_timeout:g} s; "
                                          f"its last messages:\n{self.stderr_tail()}") from None
        if hello.get("event") != "hello":
            self._stop_process(timeout=2.0)
            raise BackendError(*self._startup_failure(hello, spec.argv[0]))
        problem = protocol_problem(hello, spec.argv[0])
        if problem:
            self._stop_process(timeout=2.0)
            raise BackendError(KIND_PROTOCOL, problem)
        self._hello = hello

    def _startup_failure(self, event: dict[str, Any], python: str) -> tuple[str, str]:
        """Turn a backend that died or complained before `hello` into an actionable message."""
        if event.get("kind") == KIND_MISSING_DEPENDENCY:
            return KIND_MISSING_DEPENDENCY, event.get("message", "")
        tail = self.stderr_tail()
        if "No module named 'backend'" in tail:
            return KIND_MISSING_DEPENDENCY, (
                f"the interpreter {python} does not have the SlimDiffSR backend installed. "
                "Use 'Set up backend' in the SlimDiffSR panel, or choose another interpreter in its settings.")
        if "No module named 'osgeo'" in tail:
            return KIND_MISSING_DEPENDENCY, (
                f"the interpreter {python} has no GDAL Python bindings (osgeo); the backend needs them. "
                "Use 'Set up backend', which builds on QGIS's own Python and its GDAL.")
        return event.get("kind", KIND_INTERNAL), f"the backend failed to start: {event.get('message', '')}\n{tail}"

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
        died = self._died(process)
        ended = {"event": "error", "kind": died.kind, "message": str(died)}
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


def remove_partial_outputs(output: str, pid: int) -> list[str]:
    """Delete the half-written files (sidecars included) that the dead backend `pid` left beside `output`.

    Only that process's files: another backend may be writing the same target right now.
    Returns the removed paths.
    """
    target = Path(output)
    removed = []
    for partial in target.parent.glob(partial_glob(output)):
        if partial_owner(partial.name, output) != pid:
            continue
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
    """A sentence when the GPU the user wanted or has could not be used; empty otherwise.

    Silent for device "cpu", and for "auto" on a machine without a GPU: the CPU is
    then simply the device, not a fallback worth a warning after every run.
    """
    environment = (hello or {}).get("environment") or {}
    if device == "cpu" or not environment or environment.get("cuda", False):
        return ""
    detail = environment.get("cuda_detail", "CUDA unavailable")
    if device == "cuda":
        return f"The GPU cannot be used ({detail})."
    if environment.get("cuda_present", False):
        return f"A GPU is present but cannot be used ({detail}), so the CPU was used."
    return ""
