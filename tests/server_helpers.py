"""A real `python -m backend.server` process spoken to in raw bytes, with a timeout on every read."""

from __future__ import annotations

import json
import os
import queue
import subprocess
import threading
import time
from typing import Any

from plugin_fixtures import REPO, backend_python

WAIT = 60.0


class RawServer:
    """A backend process and a queue of its stdout lines fed by a reader thread, so every read has a timeout."""

    def __init__(self, python: str = "") -> None:
        self.process = subprocess.Popen([python or backend_python(), "-m", "backend.server"], cwd=REPO,
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                        env={**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"})
        self.lines: "queue.Queue[bytes]" = queue.Queue()
        self.stderr = bytearray()
        threading.Thread(target=self._read, daemon=True).start()
        self._stderr_reader = threading.Thread(target=self._drain_stderr, daemon=True)
        self._stderr_reader.start()

    def _read(self) -> None:
        for line in self.process.stdout:
            self.lines.put(line)

    def _drain_stderr(self) -> None:
        # Read continuously: a backend logging into a full pipe would block.
        for line in self.process.stderr:
            self.stderr += line

    def send_raw(self, line: bytes) -> None:
        self.process.stdin.write(line)
        self.process.stdin.flush()

    def send(self, message: dict) -> None:
        self.send_raw(json.dumps(message).encode() + b"\n")

    def event(self, timeout: float = WAIT) -> dict[str, Any]:
        return json.loads(self.lines.get(timeout=timeout))

    def until(self, request_id, kinds=("result", "error")) -> list[dict]:
        """Events of `request_id` up to and including the first one whose kind is in `kinds`."""
        seen = []
        while True:
            event = self.event()
            if event.get("id") == request_id:
                seen.append(event)
                if event["event"] in kinds:
                    return seen

    def seconds_to_exit_after_closing_stdin(self) -> float:
        """Close the backend's input and time how long the process takes to end (bounded by WAIT)."""
        started = time.monotonic()
        self.process.stdin.close()
        self.process.wait(timeout=WAIT)
        return time.monotonic() - started

    def log(self) -> str:
        """What the backend wrote on stderr so far (all of it once the process has ended)."""
        if self.process.poll() is not None:
            self._stderr_reader.join(timeout=WAIT)
        return self.stderr.decode("utf-8", "replace")

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(timeout=WAIT)
        for stream in (self.process.stdin, self.process.stdout):
            if not stream.closed:
                stream.close()
