"""Scenes on a real local Dask cluster: the same outputs as serial runs, a lost worker survived, cancel leaves nothing."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import numpy as np
import pytest

from backend.engine import Engine
from plugin_fixtures import write_tiny_shipped_like_weights
from rasters import read_raster, smooth_image, write_raster
from slimdiffsr_qgis.contract import Cancelled, RunRequest

distributed = pytest.importorskip("distributed", reason="the optional extra slimdiffsr[distributed]")


@pytest.fixture(scope="module")
def cluster_client():
    from backend.cluster import connect

    client = connect(workers=2, scheduler=None)
    yield client
    cluster = client.cluster
    client.close()
    cluster.close()


@pytest.fixture
def scenes(tmp_path) -> tuple[list[RunRequest], Path]:
    weights = write_tiny_shipped_like_weights(tmp_path / "tiny.safetensors")
    out = tmp_path / "out"
    out.mkdir()
    requests = []
    for index, (bands, side) in enumerate([(3, 96), (1, 80), (4, 64)]):
        values = (smooth_image(bands, side, side + 16, seed=index) * 9000).astype(np.uint16)
        source = write_raster(str(tmp_path / f"scene{index}.tif"), values)
        requests.append(RunRequest(input=source, output=str(out / f"scene{index}_x4.tif"), weights=weights,
                                   tile=32, overlap=8, device="cpu"))
    return requests, out


def serial_outputs(requests: list[RunRequest], folder: Path) -> list[np.ndarray]:
    engine = Engine()
    outputs = []
    for request in requests:
        target = folder / ("serial_" + Path(request.output).name)
        engine.run(RunRequest.from_dict({**request.to_dict(), "output": str(target)}))
        outputs.append(read_raster(str(target))[0])
    return outputs


def test_scenes_on_two_workers_equal_serial_runs(cluster_client, scenes, tmp_path):
    from backend.cluster import run_on_cluster

    requests, out = scenes
    seen = []
    results = run_on_cluster(cluster_client, requests, progress=lambda done, total: seen.append((done, total)))
    assert [r["output"] for r in results] == [r.output for r in requests]
    assert seen[-1] == (3, 3)
    for request, expected in zip(requests, serial_outputs(requests, tmp_path)):
        values = read_raster(request.output)[0]
        assert values.shape == expected.shape
        # Workers run torch with another thread count than this process: allow 1 DN of rounding.
        assert np.abs(values.astype(np.int32) - expected.astype(np.int32)).max() <= 1


def test_a_worker_killed_mid_run_does_not_lose_the_scenes(cluster_client, scenes):
    from backend.cluster import run_on_cluster

    requests, out = scenes
    pids = list(cluster_client.run(os.getpid).values())
    killed = []

    def kill_once(done: int, total: int) -> None:
        if not killed:
            killed.append(pids[0])
            os.kill(pids[0], signal.SIGKILL)

    results = run_on_cluster(cluster_client, requests, progress=kill_once)
    assert killed and len(results) == 3
    assert all(Path(r.output).is_file() for r in requests)
    assert sorted(p.name for p in out.iterdir()) == sorted(Path(r.output).name for r in requests)


def test_cancel_stops_every_scene_and_leaves_no_file(cluster_client, tmp_path):
    from backend.cluster import run_on_cluster

    weights = write_tiny_shipped_like_weights(tmp_path / "tiny.safetensors")
    out = tmp_path / "out"
    out.mkdir()
    requests = []
    for index in range(3):
        values = (smooth_image(3, 640, 640, seed=index) * 9000).astype(np.uint16)
        source = write_raster(str(tmp_path / f"big{index}.tif"), values)
        requests.append(RunRequest(input=source, output=str(out / f"big{index}_x4.tif"), weights=weights,
                                   tile=32, overlap=8, device="cpu"))
    started = time.monotonic()
    with pytest.raises(Cancelled):
        run_on_cluster(cluster_client, requests, should_cancel=lambda: time.monotonic() - started > 1.5)
    assert sorted(p.name for p in out.iterdir()) == []


@pytest.fixture
def huge_scene(tmp_path) -> RunRequest:
    """A scene of 13 tile rows (tile 32, overlap 8) with a nodata block, run in windows of tile rows."""
    weights = write_tiny_shipped_like_weights(tmp_path / "tiny.safetensors")
    values = (smooth_image(3, 300, 260, seed=7) * 9000).astype(np.uint16) + 10
    values[:, 100:140, 30:90] = 0
    source = write_raster(str(tmp_path / "huge.tif"), values, nodata=0)
    (tmp_path / "out").mkdir()
    return RunRequest(input=source, output=str(tmp_path / "out" / "huge_x4.tif"), weights=weights, tile=32,
                      overlap=8, device="cpu")


def test_windows_of_one_scene_assemble_into_the_single_runs_values(cluster_client, huge_scene, tmp_path):
    from backend.cluster import run_windows_on_cluster

    seen = []
    result = run_windows_on_cluster(cluster_client, huge_scene, windows=4,
                                    progress=lambda done, total: seen.append((done, total)))
    assert result["output"] == huge_scene.output
    assert seen[-1][0] == seen[-1][1] and [d for d, _ in seen] == sorted(d for d, _ in seen)
    values, transform, wkt, nodata, metadata = read_raster(huge_scene.output)
    [expected] = serial_outputs([huge_scene], tmp_path)
    _, serial_transform, serial_wkt, serial_nodata, serial_metadata = read_raster(str(tmp_path / "serial_huge_x4.tif"))
    # Workers run torch with one thread, as this test process does: the values are the same bit for bit.
    np.testing.assert_array_equal(values, expected)
    assert (transform, wkt, nodata) == (serial_transform, serial_wkt, serial_nodata)
    assert metadata == serial_metadata
    assert os.listdir(Path(huge_scene.output).parent) == ["huge_x4.tif"], "no part file is left"


def test_a_worker_killed_mid_window_does_not_change_the_scene(cluster_client, huge_scene, tmp_path):
    from backend.cluster import run_windows_on_cluster

    pids = list(cluster_client.run(os.getpid).values())
    killed = []

    def kill_once(done: int, total: int) -> None:
        if not killed and done > 0:
            killed.append(pids[0])
            os.kill(pids[0], signal.SIGKILL)

    run_windows_on_cluster(cluster_client, huge_scene, windows=4, progress=kill_once)
    assert killed
    [expected] = serial_outputs([huge_scene], tmp_path)
    np.testing.assert_array_equal(read_raster(huge_scene.output)[0], expected)
    assert os.listdir(Path(huge_scene.output).parent) == ["huge_x4.tif"], "a lost worker's part is removed too"


def test_cancelling_a_windowed_scene_leaves_no_file(cluster_client, huge_scene):
    from backend.cluster import run_windows_on_cluster

    started = time.monotonic()
    with pytest.raises(Cancelled):
        run_windows_on_cluster(cluster_client, huge_scene, windows=4,
                               should_cancel=lambda: time.monotonic() - started > 1.0)
    assert os.listdir(Path(huge_scene.output).parent) == []


def test_window_rows_split_the_grid_evenly():
    from backend.cluster import window_rows

    assert window_rows(13, 4) == [(0, 3), (3, 6), (6, 10), (10, 13)]
    assert window_rows(3, 4) == [(0, 3)]
    assert window_rows(1, 4) == [(0, 1)]
