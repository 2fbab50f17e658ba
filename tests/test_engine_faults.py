"""Faults users meet are bad input with a message naming the file, refused before compute where possible,
and never leave a partial file, a sidecar, or a replaced file behind."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
from osgeo import gdal, osr

from backend.engine import Engine
from input_cases import InputCase, assert_only, check_output, write_case
from plugin_fixtures import REPO, backend_python, one_thread_backends, write_tiny_shipped_like_weights  # noqa: F401
from rasters import ORIGIN, PIXEL, UTM33N, read_raster, smooth_image, write_raster
from slimdiffsr_qgis.contract import BadInput, RunRequest, partial_path


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> str:
    return write_tiny_shipped_like_weights(tmp_path_factory.mktemp("weights") / "tiny_x4.safetensors")


@pytest.fixture(scope="module")
def engine() -> Engine:
    return Engine()


@pytest.fixture
def rgb(tmp_path) -> str:
    return write_raster(str(tmp_path / "rgb.tif"), (smooth_image(3, 40, 48) * 10000).astype(np.uint16))


def _never(*_):
    raise AssertionError("the run reached the model, but the request should have been refused before compute")


def test_an_output_that_appears_during_the_run_is_never_replaced(engine, weights, rgb, tmp_path):
    out = tmp_path / "out.tif"

    def someone_else_writes_the_output(done, total):
        if not out.exists():
            out.write_bytes(b"another program's file")

    with pytest.raises(BadInput, match="appeared during the run; pass --overwrite"):
        engine.run(RunRequest(input=rgb, output=str(out), weights=weights, tile=32, overlap=8),
                   progress=someone_else_writes_the_output)
    assert out.read_bytes() == b"another program's file"
    assert_only(tmp_path, ["out.tif", "rgb.tif"])


def test_overwrite_replaces_an_existing_output(engine, weights, tmp_path):
    src = write_case(tmp_path / "in.tif", InputCase(np.uint8, 3, "none"))
    out = tmp_path / "out.tif"
    out.write_bytes(b"old result")
    engine.run(RunRequest(input=src, output=str(out), weights=weights, overwrite=True))
    check_output(src, str(out))
    assert_only(tmp_path, ["in.tif", "out.tif"])


def test_a_truncated_geotiff_is_bad_input_naming_the_file(engine, weights, tmp_path):
    src = tmp_path / "cut.tif"
    values = np.random.default_rng(0).integers(0, 10000, (3, 300, 300)).astype(np.uint16)
    write_raster(str(src), values)
    with open(src, "r+b") as handle:
        handle.truncate(src.stat().st_size // 2)
    with pytest.raises(BadInput, match=r"cut\.tif could not be read \(GDAL: .*\).*truncated or damaged"):
        engine.run(RunRequest(input=str(src), output=str(tmp_path / "out.tif"), weights=weights))
    assert_only(tmp_path, ["cut.tif"])


def test_a_vrt_whose_source_was_deleted_is_bad_input_naming_both(engine, weights, rgb, tmp_path):
    vrt = tmp_path / "mosaic.vrt"
    gdal.Translate(str(vrt), rgb, format="VRT")
    os.remove(rgb)
    with pytest.raises(BadInput, match=r"mosaic\.vrt could not be read \(GDAL: .*rgb\.tif"):
        engine.run(RunRequest(input=str(vrt), output=str(tmp_path / "out.tif"), weights=weights))
    assert_only(tmp_path, ["mosaic.vrt"])


@pytest.mark.parametrize("output,message", [
    ("folder.tif", "is a folder; give a file path"),
    ("missing/out.tif", "does not exist; create it first"),
])
def test_an_output_path_that_cannot_be_written_is_refused_before_compute(engine, weights, rgb, tmp_path, output,
                                                                        message):
    (tmp_path / "folder.tif").mkdir()
    with pytest.raises(BadInput, match=message):
        engine.run(RunRequest(input=rgb, output=str(tmp_path / output), weights=weights), progress=_never)
    with pytest.raises(BadInput, match=message):
        engine.plan(RunRequest(input=rgb, output=str(tmp_path / output), weights=weights))


def test_stale_partials_of_dead_processes_are_removed_and_a_live_ones_kept(engine, weights, rgb, tmp_path):
    out = tmp_path / "out.tif"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        stale = Path(partial_path(str(out), dead.pid, "0bad"))
        running = Path(partial_path(str(out), live.pid, "0900d"))
        for path in (stale, Path(f"{stale}.msk"), running):
            path.write_bytes(b"partial")
        engine.run(RunRequest(input=rgb, output=str(out), weights=weights))
        assert_only(tmp_path, ["out.tif", "rgb.tif", running.name])
    finally:
        live.kill()
        live.wait()


def test_a_masked_input_leaves_no_mask_sidecar_and_its_holes_stay_holes(engine, weights, tmp_path):
    src = tmp_path / "masked.tif"
    values = (smooth_image(1, 40, 48) * 255).astype(np.uint8)
    write_raster(str(src), values)
    dataset = gdal.Open(str(src), gdal.GA_Update)
    dataset.CreateMaskBand(gdal.GMF_PER_DATASET)  # GDAL 3.6 puts this mask in masked.tif.msk
    mask = np.full(values.shape[1:], 255, np.uint8)
    mask[10:20, 5:15] = 0
    dataset.GetRasterBand(1).GetMaskBand().WriteArray(mask)
    dataset = None
    out = tmp_path / "out.tif"
    engine.run(RunRequest(input=str(src), output=str(out), weights=weights, tile=32, overlap=8))
    check_output(str(src), str(out))
    assert_only(tmp_path, ["masked.tif", "masked.tif.msk", "out.tif"])


def test_a_four_band_uint16_raster_keeps_its_four_bands_and_their_colours(engine, weights, tmp_path):
    src = write_case(tmp_path / "s2.tif", InputCase(np.uint16, 4, "none"))
    out = tmp_path / "out.tif"
    result = engine.run(RunRequest(input=src, output=str(out), weights=weights))
    check_output(src, str(out))
    dataset = gdal.Open(str(out))
    colours = [gdal.GetColorInterpretationName(dataset.GetRasterBand(b).GetColorInterpretation()) for b in (1, 2, 3, 4)]
    assert colours == ["Blue", "Green", "Red", "Undefined"]
    assert dataset.GetMetadataItem("SLIMDIFFSR_PASSES") == "3,2,1;4", "the red, green, blue bands went together"
    assert (result.bands, result.passes) == (4, 2)


@pytest.mark.parametrize("bands,rgb,passes", [((4, 2), None, "4;2"), ((4, 3, 2, 1), (4, 3, 2), "4,3,2;1")])
def test_selected_bands_are_written_in_the_order_asked(engine, weights, tmp_path, bands, rgb, passes):
    src = write_case(tmp_path / "s2.tif", InputCase(np.uint16, 4, "nodata"))
    out = tmp_path / "out.tif"
    engine.run(RunRequest(input=src, output=str(out), weights=weights, bands=bands, rgb=rgb))
    check_output(src, str(out), bands=bands)
    assert read_raster(str(out))[4]["SLIMDIFFSR_PASSES"] == passes


def test_progress_total_is_the_plans_step_count(engine, weights, tmp_path):
    src = write_case(tmp_path / "s2.tif", InputCase(np.uint16, 4, "none", width=70, height=50))
    request = RunRequest(input=src, output=str(tmp_path / "out.tif"), weights=weights, tile=32, overlap=8)
    plan = engine.plan(request)
    seen = []
    engine.run(request, progress=lambda done, total: seen.append((done, total)))
    assert plan.passes == 2 and plan.tiles == 6
    assert plan.steps == (6 + 6) * 2, "every tile and every statistics tile, once per pass"
    assert seen == [(done, plan.steps) for done in range(1, plan.steps + 1)]


def _georeferenced_float_dataset(driver: str, path: str, bands: int) -> None:
    source = gdal.GetDriverByName("MEM").Create("", 24, 20, bands, gdal.GDT_Float32)
    source.SetGeoTransform((ORIGIN[0], PIXEL, 0.0, ORIGIN[1], 0.0, -PIXEL))
    srs = osr.SpatialReference()
    srs.ImportFromEPSG(UTM33N)
    source.SetProjection(srs.ExportToWkt())
    for index in range(bands):
        source.GetRasterBand(index + 1).WriteArray(smooth_image(1, 20, 24, seed=index)[0].astype(np.float32))
    gdal.GetDriverByName(driver).CreateCopy(path, source)
    source = None


def test_gdal_connection_strings_and_virtual_paths_are_accepted(engine, weights, rgb, tmp_path):
    archive = tmp_path / "scene.zip"
    with zipfile.ZipFile(archive, "w") as bundle:
        bundle.write(rgb, "inner/rgb.tif")
    memory = "/vsimem/slimdiffsr_test_input.tif"
    gdal.Translate(memory, rgb)
    try:
        for index, name in enumerate([f"/vsizip/{archive}/inner/rgb.tif", memory]):
            out = tmp_path / f"out{index}.tif"
            engine.run(RunRequest(input=name, output=str(out), weights=weights))
            assert read_raster(str(out))[0].shape == (3, 160, 192)
    finally:
        gdal.Unlink(memory)


@pytest.mark.skipif(gdal.GetDriverByName("netCDF") is None, reason="this GDAL has no netCDF driver")
def test_a_container_of_subdatasets_is_refused_with_their_names_and_one_of_them_runs(engine, weights, tmp_path):
    container = str(tmp_path / "two.nc")
    _georeferenced_float_dataset("netCDF", container, 2)
    with pytest.raises(BadInput, match=r'2 subdatasets.*NETCDF:".*two\.nc":Band1, NETCDF:".*two\.nc":Band2'):
        engine.plan(RunRequest(input=container, output=str(tmp_path / "out.tif"), weights=weights))
    out = tmp_path / "out.tif"
    engine.run(RunRequest(input=f'NETCDF:"{container}":Band2', output=str(out), weights=weights))
    assert read_raster(str(out))[0].shape == (1, 80, 96)


def test_a_missing_input_is_named(engine, weights, tmp_path):
    with pytest.raises(BadInput, match="input .*nowhere.tif does not exist"):
        engine.plan(RunRequest(input=str(tmp_path / "nowhere.tif"), output=str(tmp_path / "out.tif")))


FULL_DISK = """
import resource, signal, sys
sys.path.insert(0, "tests")
from backend.engine import Engine
from slimdiffsr_qgis.contract import BadInput, RunRequest
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG, as on a full disk
request = RunRequest(input=sys.argv[1], output=sys.argv[2], weights=sys.argv[3])
engine = Engine()
engine.plan(request)
resource.setrlimit(resource.RLIMIT_FSIZE, (20000, 20000))
try:
    engine.run(request)
except BadInput as error:
    print(error)
    sys.exit(2)
"""


@pytest.mark.skipif(not hasattr(os, "fork"), reason="file size limits are POSIX")
def test_a_write_error_is_bad_input_naming_the_output_folder_and_leaves_nothing(weights, tmp_path,
                                                                              one_thread_backends):
    values = np.random.default_rng(0).integers(0, 60000, (3, 160, 160)).astype(np.uint16)  # incompressible
    src = write_raster(str(tmp_path / "noisy.tif"), values)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    done = subprocess.run([backend_python(), "-c", FULL_DISK, src, str(out_dir / "out.tif"), weights],
                          capture_output=True, text=True, cwd=REPO, timeout=300)
    assert done.returncode == 2, done.stderr[-3000:]
    assert f"could not write output {out_dir / 'out.tif'} in {out_dir}" in done.stdout
    assert "Exception ignored" not in done.stderr
    assert_only(out_dir, [])


