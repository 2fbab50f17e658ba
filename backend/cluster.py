"""Run many scenes on a Dask cluster: one task per scene, the model loaded once per worker.

`slimdiffsr run IN... --out-dir D --workers N` starts a local cluster of N worker processes on this
machine; `--scheduler ADDRESS` uses an existing cluster (dask-jobqueue on an HPC system, Kubernetes, a
cloud cluster), whose workers need this package, torch and GDAL, and must see the input and output paths.
Dask is an optional dependency (`pip install slimdiffsr[distributed]`), imported only here.

Each task runs one request through its worker's `Engine` (one per worker process, so a model loads once
per worker and serves every scene sent there). A task whose worker dies is run again on another worker
(Dask's own rescheduling; the dead worker's partial file is removed by the next run to that target, since
its process is gone). Cancelling sets a cluster-wide event that every running task checks between tiles,
so each one stops, removes its partial output and ends as Cancelled.
"""

from __future__ import annotations

import logging
import os
import time
import uuid
from dataclasses import asdict
from typing import Any, Callable, Optional, Sequence

from slimdiffsr_qgis.contract import BadInput, Cancelled, RunRequest

# How often a task asks the scheduler whether its run was cancelled: each check is a round trip.
CANCEL_CHECK_SECONDS = 0.5
# How often the client wakes to report progress and look for a cancel.
POLL_SECONDS = 0.2
# How long cancelled tasks get to stop between tiles and remove their partial files.
CANCEL_GRACE_SECONDS = 60.0
# Exceptions inside a task are user errors (BadInput) or bugs: running them again gives the same answer.
TASK_RETRIES = 0

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


def run_scene(request: dict[str, Any], cancel_event: str) -> dict[str, Any]:
    """The task: one request on this worker's engine; stops between tiles once `cancel_event` is set."""
    from distributed import Event

    event = Event(cancel_event)
    last_check = [0.0, False]

    def should_cancel() -> bool:
        now = time.monotonic()
        if now - last_check[0] >= CANCEL_CHECK_SECONDS:
            last_check[0], last_check[1] = now, event.is_set()
        return last_check[1]

    result = engine_of_this_worker().run(RunRequest.from_dict(request), should_cancel=should_cancel)
    return asdict(result)


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
