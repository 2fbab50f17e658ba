"""Run scenes on a Dask cluster: one task per scene, or one huge scene in windows; the model loaded once per worker.

`slimdiffsr run IN... --out-dir D --workers N` starts a local cluster of N worker processes on this
machine; `--scheduler ADDRESS` uses an existing cluster (dask-jobqueue on an HPC system, Kubernetes, a
cloud cluster), whose workers need this package, torch and GDAL, and must see the input and output paths.
Dask is an optional dependency (`pip install slimdiffsr[distributed]`), imported only here.

Each task runs one request through its worker's `Engine` (one per worker process, so a model loads once
per worker and serves every scene sent there). A task whose worker dies is run again on another worker
(Dask's own rescheduling; the dead worker's partial file is removed by the next run to that target, since
its process is gone). Cancelling sets a cluster-wide event that every running task checks between tiles,
so each one stops, removes its partial output and ends as Cancelled.

One huge scene (`run_windows_on_cluster`) runs as windows of tile rows: a first task computes what every
tile shares (normalisation, fill values, GroupNorm statistics: `Engine.prepare`), each window task runs
its tile rows plus the rows above whose outputs blend into them (its halo) and writes its rows to a part
file beside the target, and a last task copies the parts into the one output GeoTIFF. The blender sums
each output cell over the same tiles in the same order as a single run, so the output has the values a
single-machine run gives (`StreamingBlender.window_rows`). Part files carry the run's id in their hidden
partial names; the last task, or a cancel or failure, removes every one of them, a lost worker's included.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
import uuid
from dataclasses import asdict
from typing import Any, Callable, Optional, Sequence

from slimdiffsr_qgis.contract import BadInput, Cancelled, RunRequest, glob_escape, partial_glob, partial_path

# How often a task asks the scheduler whether its run was cancelled: each check is a round trip.
CANCEL_CHECK_SECONDS = 0.5
# How often the client wakes to report progress and look for a cancel.
POLL_SECONDS = 0.2
# How long cancelled tasks get to stop between tiles and remove their partial files.
CANCEL_GRACE_SECONDS = 60.0
# Exceptions inside a task are user errors (BadInput) or bugs: running them again gives the same answer.
TASK_RETRIES = 0
# Windows per worker when a scene is split: more than one evens out unequal workers and makes a lost
# worker's retry short; each window past the first costs its halo (a tile row or so run twice).
WINDOWS_PER_WORKER = 2
# Fewest tile rows a window holds, so its halo stays a small share of its work.
MIN_WINDOW_ROWS = 2

Progress = Callable[[int, int], None]
ShouldCancel = Callable[[], bool]

_worker_engine: Any = None


def engine_of_this_worker() -> Any:
    """The worker process's engine, made on its first task: its loaded models serve every later task."""
    global _worker_engine
    if _worker_engine is None:
        from .engine import Engine

        _worker_engine = Engine()
    return _worker_engine


def _cancel_check(cancel_event: str) -> ShouldCancel:
    """should_cancel() for a task: asks the scheduler about `cancel_event` at most every CANCEL_CHECK_SECONDS."""
    from distributed import Event

    event = Event(cancel_event)
    last_check = [0.0, False]

    def should_cancel() -> bool:
        now = time.monotonic()
        if now - last_check[0] >= CANCEL_CHECK_SECONDS:
            last_check[0], last_check[1] = now, event.is_set()
        return last_check[1]
    return should_cancel


def run_scene(request: dict[str, Any], cancel_event: str) -> dict[str, Any]:
    """The task: one request on this worker's engine; stops between tiles once `cancel_event` is set."""
    result = engine_of_this_worker().run(RunRequest.from_dict(request), should_cancel=_cancel_check(cancel_event))
    return asdict(result)


def prepare_scene(request: dict[str, Any], cancel_event: str) -> Any:
    """The first task of a windowed scene: what every window shares (`Engine.prepare`)."""
    return engine_of_this_worker().prepare(RunRequest.from_dict(request), should_cancel=_cancel_check(cancel_event))


def run_window(request: dict[str, Any], prepared: Any, index: int, rows: tuple[int, int], run_id: str,
               cancel_event: str, progress_queue: str) -> tuple[str, int, int]:
    """A window task: tile rows rows[0]..rows[1]-1 into a part file; returns (part, y, height).

    Its tile passes go to `progress_queue` as (index, passes so far), at most every CANCEL_CHECK_SECONDS
    and at the end; a retried window starts again from zero.
    """
    from distributed import Queue

    queue = Queue(progress_queue)
    done, last = [0], [0.0]

    def progress(count: int) -> None:
        done[0] += count
        if time.monotonic() - last[0] >= CANCEL_CHECK_SECONDS:
            last[0] = time.monotonic()
            queue.put((index, done[0]))

    request_ = RunRequest.from_dict(request)
    part = partial_path(request_.output, os.getpid(), f"{run_id}{index:04x}")
    y, height = engine_of_this_worker().run_window(request_, prepared, rows[0], rows[1], part, progress,
                                                   _cancel_check(cancel_event))
    queue.put((index, done[0]))
    return part, y, height


def assemble_scene(request: dict[str, Any], prepared: Any, parts: list[tuple[str, int, int]], run_id: str,
                   seconds: float) -> dict[str, Any]:
    """The last task of a windowed scene: the parts into the output (`Engine.assemble`), leftovers removed."""
    request_ = RunRequest.from_dict(request)
    try:
        return asdict(engine_of_this_worker().assemble(request_, prepared, parts, seconds))
    finally:
        discard_parts(request_.output, run_id)


def discard_parts(target: str, run_id: str) -> list[str]:
    """Delete every part file of run `run_id` beside `target` (and their own partial files); returns them."""
    folder = Path(target).resolve().parent
    removed = []
    for pattern in (partial_glob(target), "." + partial_glob(target)):
        for path in folder.glob(pattern + f"-{glob_escape(run_id)}*"):
            try:
                path.unlink()
                removed.append(str(path))
            except FileNotFoundError:
                pass
    return removed


def _set_torch_threads(threads: int) -> int:
    import torch

    torch.set_num_threads(threads)
    return os.getpid()


def connect(workers: Optional[int], scheduler: Optional[str]) -> Any:
    """A Dask client: of an existing cluster at `scheduler`, or of a new local one with `workers` processes."""
    try:
        from distributed import Client, LocalCluster
    except ImportError:
        raise BadInput("--workers and --scheduler need Dask: pip install 'slimdiffsr[distributed]'") from None
    if scheduler:
        try:
            return Client(scheduler, timeout="20s")
        except (OSError, TimeoutError) as error:
            raise BadInput(f"no Dask scheduler answered at {scheduler} ({error}); start one or check the "
                           "address") from None
    if workers is None or workers < 1:
        raise BadInput(f"--workers must be at least 1, got {workers}")
    cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None,
                           silence_logs=logging.ERROR)
    client = Client(cluster)
    # Each worker process runs one scene at a time; torch's threads share this machine's cores among them.
    client.run(_set_torch_threads, max(1, (os.cpu_count() or 1) // workers))
    return client


def run_on_cluster(client: Any, requests: Sequence[RunRequest], progress: Optional[Progress] = None,
                   should_cancel: Optional[ShouldCancel] = None) -> list[dict[str, Any]]:
    """Run every request as one task on `client`'s cluster; results in request order.

    progress(done, total) counts finished scenes. The first failing scene cancels the others and its
    error is raised; `should_cancel()` turning true cancels all and raises Cancelled. Either way no
    partial output is left: every task stops between tiles and removes its own.
    """
    from distributed import Event

    run_id = uuid.uuid4().hex[:12]
    event_name = f"slimdiffsr-cancel-{run_id}"
    event = Event(event_name, client=client)
    futures = [client.submit(run_scene, request.to_dict(), event_name, key=f"slimdiffsr-scene-{index}-{run_id}",
                             pure=False, retries=TASK_RETRIES)
               for index, request in enumerate(requests)]
    total = len(futures)
    try:
        while True:
            done = sum(future.done() for future in futures)
            if progress is not None:
                progress(done, total)
            failed = next((future for future in futures if future.status == "error"), None)
            if failed is not None:
                _stop(event, futures)
                failed.result()
            if done == total:
                return [future.result() for future in futures]
            if should_cancel is not None and should_cancel():
                _stop(event, futures)
                raise Cancelled("cancelled")
            time.sleep(POLL_SECONDS)
    except KeyboardInterrupt:
        _stop(event, futures)
        raise Cancelled("cancelled") from None


def window_rows(rows: int, windows: int) -> list[tuple[int, int]]:
    """Tile rows 0..rows-1 cut into at most `windows` bands of about equal height, each of at least
    MIN_WINDOW_ROWS rows (fewer only when the grid has fewer): (first, stop) each."""
    count = max(1, min(windows, rows // MIN_WINDOW_ROWS))
    cuts = [round(i * rows / count) for i in range(count + 1)]
    return list(zip(cuts, cuts[1:]))


def run_windows_on_cluster(client: Any, request: RunRequest, windows: Optional[int] = None,
                           progress: Optional[Progress] = None,
                           should_cancel: Optional[ShouldCancel] = None) -> dict[str, Any]:
    """Run one scene as windows of tile rows on `client`'s cluster and assemble them into its output.

    `windows` defaults to WINDOWS_PER_WORKER per worker. progress(done, total) counts tile passes as a
    single run does, plus each window's halo. A failing window stops the others and its error is
    raised; `should_cancel()` turning true stops all and raises Cancelled. Either way no output and no
    part file is left. Returns the result a single run returns (`RunResult` as a dict).
    """
    from distributed import Event, Queue

    from .tiling import StreamingBlender

    started = time.perf_counter()
    run_id = uuid.uuid4().hex[:12]
    event_name, queue_name = f"slimdiffsr-cancel-{run_id}", f"slimdiffsr-progress-{run_id}"
    event, queue = Event(event_name, client=client), Queue(queue_name, client=client)
    request_dict = request.to_dict()
    prepared_future = client.submit(prepare_scene, request_dict, event_name, key=f"slimdiffsr-prepare-{run_id}",
                                    pure=False, retries=TASK_RETRIES)
    futures = [prepared_future]
    try:
        _wait(futures, event, should_cancel)
        prepared = prepared_future.result()
        plan = prepared.plan
        blender = StreamingBlender(plan.window.width, plan.window.height, prepared.tile, request.overlap,
                                   request.scale, plan.bands)
        bands = window_rows(blender.rows, windows or WINDOWS_PER_WORKER * max(1, len(client.scheduler_info()["workers"])))
        halos = [blender.window_rows(first, stop)[2] for first, stop in bands]
        statistics_steps = plan.steps - plan.tiles * plan.passes
        total = statistics_steps + sum((stop - halo) * blender.columns * plan.passes
                                       for (_, stop), halo in zip(bands, halos))
        futures = [client.submit(run_window, request_dict, prepared_future, index, rows, run_id, event_name,
                                 queue_name, key=f"slimdiffsr-window-{index}-{run_id}", pure=False,
                                 retries=TASK_RETRIES)
                   for index, rows in enumerate(bands)]
        reported: dict[int, int] = {}
        shown = [statistics_steps]

        def report() -> None:
            for index, done in queue.get(batch=True):
                reported[index] = done
            shown[0] = max(shown[0], statistics_steps + sum(reported.values()))
            if progress is not None:
                progress(min(shown[0], total), total)

        _wait(futures, event, should_cancel, report)
        parts = [future.result() for future in futures]
        final = client.submit(assemble_scene, request_dict, prepared_future, parts, run_id,
                              time.perf_counter() - started, key=f"slimdiffsr-assemble-{run_id}", pure=False,
                              retries=TASK_RETRIES)
        futures = [final]
        _wait(futures, event, should_cancel)
        report()
        return final.result()
    except BaseException:
        _stop(event, futures)
        client.submit(discard_parts, request.output, run_id, key=f"slimdiffsr-discard-{run_id}",
                      pure=False).result()
        raise


def _wait(futures: list[Any], event: Any, should_cancel: Optional[ShouldCancel],
          report: Optional[Callable[[], None]] = None) -> None:
    """Wait for every future, reporting as it goes; raise the first task's error, or Cancelled."""
    try:
        while True:
            if report is not None:
                report()
            failed = next((future for future in futures if future.status == "error"), None)
            if failed is not None:
                failed.result()
            if all(future.done() for future in futures):
                return
            if should_cancel is not None and should_cancel():
                raise Cancelled("cancelled")
            time.sleep(POLL_SECONDS)
    except KeyboardInterrupt:
        raise Cancelled("cancelled") from None


def _stop(event: Any, futures: list[Any]) -> None:
    """Tell every task to stop and wait until each has ended (and so removed its partial file)."""
    from distributed import wait

    event.set()
    try:
        wait(futures, timeout=CANCEL_GRACE_SECONDS)
    except TimeoutError:
        pass
    for future in futures:
        future.cancel()
