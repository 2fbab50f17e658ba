"""Run the reading before the model and the blending/writing after it in threads, with bounded queues.

On a CPU the model leaves gaps (its thread pool idles between layers and between tiles); GDAL's decoding
and encoding, numpy's blending and the file writes fill them when they run beside it rather than between
its calls. Queues are bounded, so memory stays at a few tiles whatever the raster's size. An error in a
stage thread is raised in the caller; a stop (the caller's error or cancel) ends both threads promptly.
"""

from __future__ import annotations

import queue
import threading
from typing import Callable, Generic, Iterable, Iterator, Optional, TypeVar

Item = TypeVar("Item")

# Items a stage may hold ready beyond the one being worked on: enough to absorb jitter, few enough for memory.
QUEUE_DEPTH = 2
_WAIT_SECONDS = 0.1
_END = object()


class Prefetch(Generic[Item]):
    """Iterate `items` in a background thread, `depth` items ahead of the consumer."""

    def __init__(self, items: Iterable[Item], depth: int = QUEUE_DEPTH):
        self._queue: "queue.Queue[object]" = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._error: Optional[BaseException] = None
        self._thread = threading.Thread(target=self._produce, args=(items,), name="slimdiffsr-read", daemon=True)
        self._thread.start()

    def _produce(self, items: Iterable[Item]) -> None:
        try:
            for item in items:
                if not _put(self._queue, item, self._stop):
                    return
        except BaseException as error:  # raised in the consumer, which owns the run
            self._error = error
        _put(self._queue, _END, self._stop)

    def __iter__(self) -> Iterator[Item]:
        while True:
            item = self._queue.get()
            if item is _END:
                if self._error is not None:
                    raise self._error
                return
            yield item  # type: ignore[misc]

    def close(self) -> None:
        """Stop reading ahead and wait for the thread (it finishes the item in hand)."""
        self._stop.set()
        self._thread.join()


class Consume(Generic[Item]):
    """Hand items to `handle` in a background thread, in order; `finish()` waits for the last one."""

    def __init__(self, handle: Callable[[Item], None], depth: int = QUEUE_DEPTH):
        self._queue: "queue.Queue[object]" = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._error: Optional[BaseException] = None
        self._thread = threading.Thread(target=self._consume, args=(handle,), name="slimdiffsr-write",
                                        daemon=True)
        self._thread.start()

    def _consume(self, handle: Callable[[Item], None]) -> None:
        while not self._stop.is_set():
            try:
                item = self._queue.get(timeout=_WAIT_SECONDS)
            except queue.Empty:
                continue
            if item is _END:
                return
            try:
                handle(item)  # type: ignore[arg-type]
            except BaseException as error:
                self._error = error
                self._stop.set()
                return

    def put(self, item: Item) -> None:
        """Queue an item (waits while the queue is full); raises the handler's error, if it failed."""
        self._raise()
        while not _put(self._queue, item, self._stop):
            self._raise()
            raise RuntimeError("the write stage was stopped")

    def finish(self) -> None:
        """Wait until every queued item is handled; raises the handler's error, if it failed."""
        _put(self._queue, _END, self._stop)
        self._thread.join()
        self._raise()

    def close(self) -> None:
        """Stop without handling what is still queued, and wait for the thread."""
        self._stop.set()
        self._thread.join()

    def _raise(self) -> None:
        if self._error is not None:
            raise self._error


def _put(target: "queue.Queue[object]", item: object, stop: threading.Event) -> bool:
    """Put `item`, waiting for room unless `stop` is set; False when stopped."""
    while not stop.is_set():
        try:
            target.put(item, timeout=_WAIT_SECONDS)
            return True
        except queue.Full:
            continue
    return False
