"""The engine on real GeoTIFFs: georeference, dtypes, nodata, seams, atomic output, cancel."""

import os

import numpy as np
import pytest
from osgeo import gdal, osr

from backend.engine import (Engine, STATISTICS_TILE_SIDE, STATISTICS_TILES, statistics_sample, super_resolve_array,
                            window_statistics)
from slimdiffsr_qgis.contract import BadInput, Cancelled
from slimdiffsr_qgis.contract import RunRequest
from models_for_tests import LocalConvModel, NearestUpscaler, WindowNormalisedUpscaler
from plugin_fixtures import write_tiny_shipped_like_weights
from rasters import ORIGIN, PIXEL, read_raster, smooth_image, write_raster


@pytest.fixture(scope="module")
def student(tmp_path_factory) -> str:
    """A tiny student with the shipped file's metadata: inputs go through the path users' runs take."""
    return write_tiny_shipped_like_weights(tmp_path_factory.mktemp("weights") / "student.safetensors")


@pytest.fixture(scope="module")
def engine():
    return Engine()


def test_window_output_is_georeferenced_on_the_input_grid(engine, rgb_uint16, tmp_path, student):
    out = str(tmp_path / "out.tif")
    # A window 30 px in from the left, 20 px down, 40 x 30 px, given in map units.
    extent = (ORIGIN[0] + 30 * PIXEL, ORIGIN[1] - 50 * PIXEL, ORIGIN[0] + 70 * PIXEL, ORIGIN[1] - 20 * PIXEL)
    engine.run(RunRequest(input=rgb_uint16, output=out, scale=4, extent=extent, weights=student))
    values, transform, wkt, _, _ = read_raster(out)
    _, _, source_wkt, _, _ = read_raster(rgb_uint16)
    assert values.shape == (3, 30 * 4, 40 * 4)
    assert transform == pytest.approx((extent[0], PIXEL / 4, 0, extent[3], 0, -PIXEL / 4))
    assert wkt == source_wkt


def test_extent_is_snapped_to_the_pixel_grid_and_clipped_to_the_raster(engine, rgb_uint16, tmp_path, student):
    out = str(tmp_path / "out.tif")
    extent = (ORIGIN[0] + 100.4 * PIXEL, ORIGIN[1] - 500 * PIXEL, ORIGIN[0] + 500 * PIXEL, ORIGIN[1] - 79.6 * PIXEL)
    engine.run(RunRequest(input=rgb_uint16, output=out, scale=4, extent=extent, weights=student))
    values, transform, _, _, _ = read_raster(out)
    assert values.shape == (3, 10 * 4, 20 * 4)  # columns 100..120, rows 80..90
    assert transform[0] == pytest.approx(ORIGIN[0] + 100 * PIXEL)
    assert transform[3] == pytest.approx(ORIGIN[1] - 80 * PIXEL)


def test_extent_in_another_crs_is_transformed_to_the_raster_crs(engine, rgb_uint16, tmp_path, student):
    source, target = osr.SpatialReference(), osr.SpatialReference()
    source.ImportFromEPSG(32633)
    target.ImportFromEPSG(4326)
    for srs in (source, target):
        srs.SetAxisMappingStrategy(osr.OAMS_TRADITIONAL_GIS_ORDER)
    to_wgs84 = osr.CoordinateTransformation(source, target)
    lon0, lat0, _ = to_wgs84.TransformPoint(ORIGIN[0] + 200, ORIGIN[1] - 400)
    lon1, lat1, _ = to_wgs84.TransformPoint(ORIGIN[0] + 600, ORIGIN[1] - 200)
    out = str(tmp_path / "out.tif")
    engine.run(RunRequest(input=rgb_uint16, output=out, scale=4, extent=(lon0, lat0, lon1, lat1),
                          extent_crs="EPSG:4326", weights=student))
    values, transform, _, _, _ = read_raster(out)
    assert values.shape[1:] == (20 * 4, 40 * 4)
    assert transform[0] == pytest.approx(ORIGIN[0] + 200, abs=PIXEL)


def test_output_overlays_the_input_in_qgis(engine, rgb_uint16, tmp_path, qgis_app, student):
    from qgis.core import QgsRasterLayer, QgsRectangle

    extent = (ORIGIN[0] + 300, ORIGIN[1] - 600, ORIGIN[0] + 900, ORIGIN[1] - 100)
    out = str(tmp_path / "out.tif")
    engine.run(RunRequest(input=rgb_uint16, output=out, scale=4, extent=extent, weights=student))
    source, result = QgsRasterLayer(rgb_uint16, "in"), QgsRasterLayer(out, "out")
    assert result.isValid() and result.crs() == source.crs()
    assert result.extent() == QgsRectangle(*extent)
    assert source.extent().contains(result.extent())
    assert result.rasterUnitsPerPixelX() == pytest.approx(source.rasterUnitsPerPixelX() / 4)


@pytest.mark.parametrize("dtype,scale_spec,nodata", [
    (np.uint8, "fixed:0,255", None),
    (np.uint16, "fixed:0,10000", 0),
    (np.int16, "fixed:-10000,10000", -9999),
    (np.float32, "fixed:0,1", -1.0),
])
def test_identity_model_returns_input_values_exactly_in_the_input_dtype(engine, tmp_path, dtype, scale_spec,
                                                                        nodata):
    image = smooth_image(3, 40, 50)
    if dtype == np.uint8:
        values = (image * 255).astype(dtype)
    elif dtype == np.uint16:
        values = (image * 10000).astype(dtype)
    elif dtype == np.int16:
        values = ((image - 0.5) * 16000).astype(dtype)
    else:
        values = image.astype(dtype)
    if nodata is not None:
        values[values == nodata] += 1  # only the block below is nodata
        values[:, 5:9, 10:14] = nodata
    src = write_raster(str(tmp_path / "in.tif"), values, nodata=nodata)
    out = str(tmp_path / "out.tif")
    # Without back-projection: this checks the raster path, and an identity model's blocky output would be
    # corrected toward the input's smooth reduction.
    engine.run(RunRequest(input=src, output=out, scale=4, normalisation=scale_spec, tile=32, overlap=8,
                          consistency=False),
               model=NearestUpscaler(4))
    result, _, _, out_nodata, metadata = read_raster(out)
    assert result.dtype == values.dtype
    assert out_nodata == nodata
    np.testing.assert_array_equal(result, values.repeat(4, axis=1).repeat(4, axis=2))
    assert metadata["SLIMDIFFSR_SCALE"] == "4"


def test_output_is_clipped_to_the_dtype_limits(engine, rgb_uint8, tmp_path):
    out = str(tmp_path / "out.tif")
    engine.run(RunRequest(input=rgb_uint8, output=out, scale=4), model=NearestUpscaler(4, gain=3.0))
    values, *_ = read_raster(out)
    assert values.dtype == np.uint8 and values.max() == 255


def test_nodata_is_filled_for_inference_and_written_back_as_nodata(engine, tmp_path, student):
    values = (smooth_image(3, 48, 48) * 10000).astype(np.uint16) + 100
    values[:, :10, :] = 0  # a nodata collar
    src = write_raster(str(tmp_path / "in.tif"), values, nodata=0)
    out = str(tmp_path / "out.tif")
    engine.run(RunRequest(input=src, output=out, scale=4, weights=student))
    result, _, _, nodata, _ = read_raster(out)
    assert nodata == 0
    assert (result[:, :40, :] == 0).all(), "nodata pixels stay nodata (mask upscaled by nearest)"
    assert (result[:, 40:, :] > 0).all(), "valid pixels never turn into nodata"


def test_single_band_input_is_replicated_for_the_model_and_written_as_one_band(engine, tmp_path, student):
    src = write_raster(str(tmp_path / "gray.tif"), (smooth_image(1, 30, 30) * 255).astype(np.uint8))
    out = str(tmp_path / "out.tif")
    engine.run(RunRequest(input=src, output=out, scale=4, weights=student))
    values, *_ = read_raster(out)
    assert values.shape == (1, 120, 120)


def test_output_metadata_records_provenance(engine, rgb_uint16, tmp_path, student):
    out = str(tmp_path / "out.tif")
    engine.run(RunRequest(input=rgb_uint16, output=out, scale=4, weights=student))
    metadata = read_raster(out)[4]
    for key in ("SLIMDIFFSR_VERSION", "SLIMDIFFSR_WEIGHTS", "SLIMDIFFSR_WEIGHTS_SHA256", "SLIMDIFFSR_SCALE",
                "SLIMDIFFSR_NORMALISATION", "SLIMDIFFSR_NOTE"):
        assert metadata[key]
    assert "percentile:2,98" in metadata["SLIMDIFFSR_NORMALISATION"]
    assert "synthesised" in metadata["SLIMDIFFSR_NOTE"]
    dataset = gdal.Open(out)
    structure = dataset.GetMetadata("IMAGE_STRUCTURE")
    assert structure.get("COMPRESSION") == "DEFLATE"
    assert dataset.GetRasterBand(1).GetBlockSize() == [256, 256]


def test_tiled_run_of_a_local_model_equals_a_single_pass():
    image = smooth_image(3, 150, 170).astype(np.float32)
    model = LocalConvModel(4)
    single = super_resolve_array(model, image, tile=512, overlap=0)
    tiled = super_resolve_array(model, image, tile=64, overlap=32)
    np.testing.assert_allclose(tiled, single, atol=1e-5)


def test_tiles_share_the_windows_group_norm_statistics_so_a_tiled_run_equals_a_single_pass():
    image = smooth_image(3, 128, 192).astype(np.float32) * np.linspace(0.2, 1.0, 192, dtype=np.float32)
    model = WindowNormalisedUpscaler(4)
    single = super_resolve_array(model, image, tile=512, overlap=0)
    one_tile = super_resolve_array(model, image[:, :64, :64], tile=512, overlap=0)
    assert np.abs(one_tile - single[:, :256, :256]).max() > 1e-2, "the model is not local: a tile alone differs"
    assert 2 * 3 <= STATISTICS_TILES  # all six abutting tiles are sampled, so the pooled statistics are exact
    tiled = super_resolve_array(model, image, tile=64, overlap=0)
    np.testing.assert_allclose(tiled, single, atol=1e-5)


def test_each_band_pass_has_its_own_group_norm_statistics_so_a_tiled_run_equals_a_single_pass():
    ramp = np.linspace(0.2, 1.0, 192, dtype=np.float32)
    image = np.stack([smooth_image(1, 128, 192)[0] * ramp, 0.8 - 0.5 * smooth_image(1, 128, 192, seed=3)[0]])
    image = image.astype(np.float32)
    model = WindowNormalisedUpscaler(4)
    tiled = super_resolve_array(model, image, tile=64, overlap=0, passes=((0,), (1,)))
    for band in range(2):
        alone = super_resolve_array(model, np.repeat(image[band:band + 1], 3, axis=0), tile=512, overlap=0)
        np.testing.assert_allclose(tiled[band], alone.mean(axis=0), atol=1e-5)


def test_window_statistics_only_where_there_is_something_to_share():
    import torch

    image = smooth_image(3, 640, 640).astype(np.float32)
    read = lambda t: np.ascontiguousarray(image[:, t.y:t.y + t.height, t.x:t.x + t.width])
    cpu = torch.device("cpu")
    assert statistics_sample(640, 640, 256, 1, group_norm=True) == []
    assert statistics_sample(640, 640, 256, 9, group_norm=False) == []
    assert window_statistics(LocalConvModel(4), [], read, cpu, 1) is None
    sample = statistics_sample(640, 640, 256, 9, group_norm=True)
    assert len(sample) == STATISTICS_TILES
    assert {(t.width, t.height) for t in sample} == {(STATISTICS_TILE_SIDE, STATISTICS_TILE_SIDE)}
    assert (sample[0].x, sample[0].y) == (0, 0) and (sample[-1].x, sample[-1].y) == (512, 512), "spread over the window"
    assert set(window_statistics(WindowNormalisedUpscaler(4), sample, read, cpu, 1)) == {"norm"}


def test_progress_counts_the_statistics_pass_so_the_bar_moves_before_the_first_output_tile(engine, rgb_uint16,
                                                                                          tmp_path):
    seen, reports_before_pass = [], []
    model = WindowNormalisedUpscaler(4)
    forward = model.forward
    model.forward = lambda lr: (reports_before_pass.append(len(seen)), forward(lr))[1]
    request = RunRequest(input=rgb_uint16, output=str(tmp_path / "out.tif"), scale=4, tile=32, overlap=8)
    plan = engine.plan(request, model=model)
    engine.run(request, progress=lambda done, total: seen.append((done, total)), model=model)
    total = plan.tiles + STATISTICS_TILES
    assert plan.tiles > STATISTICS_TILES and plan.steps == total
    assert seen == [(done, total) for done in range(1, total + 1)], "one step per tile pass, ending at the total"
    assert len(reports_before_pass) == total and reports_before_pass[1] == 1, "the statistics pass reports as it goes"


def test_tiles_without_overlap_show_seams_that_blending_removes():
    image = smooth_image(3, 128, 192).astype(np.float32)  # exactly 2 x 3 tiles of 64 when they abut
    model = LocalConvModel(4)
    single = super_resolve_array(model, image, tile=512, overlap=0)
    abutting = super_resolve_array(model, image, tile=64, overlap=0)
    blended = super_resolve_array(model, image, tile=64, overlap=32)
    assert np.abs(abutting - single).max() > 1e-2
    assert np.abs(blended - single).max() < 1e-5


def test_percentile_stretch_is_computed_once_per_run_so_a_tiled_run_has_no_seams(engine, rgb_uint16, tmp_path):
    single, tiled = str(tmp_path / "single.tif"), str(tmp_path / "tiled.tif")
    common = dict(input=rgb_uint16, scale=4, output_dtype="float32")
    engine.run(RunRequest(output=single, tile=512, overlap=0, **common), model=LocalConvModel(4))
    engine.run(RunRequest(output=tiled, tile=48, overlap=20, **common), model=LocalConvModel(4))
    np.testing.assert_allclose(read_raster(tiled)[0], read_raster(single)[0], rtol=1e-4, atol=0.05)


def test_cancel_between_tiles_leaves_no_file(engine, rgb_uint16, tmp_path):
    out = tmp_path / "out.tif"
    calls = []

    def progress(done, total):
        calls.append(done)

    with pytest.raises(Cancelled):
        engine.run(RunRequest(input=rgb_uint16, output=str(out), scale=4, tile=32, overlap=8, model="bicubic"),
                   progress=progress, should_cancel=lambda: len(calls) >= 2)
    assert calls == [1, 2], "the run stops at the next tile boundary"
    assert not out.exists()
    assert sorted(os.listdir(tmp_path)) == ["rgb_uint16.tif"]


class FailingModel(NearestUpscaler):
    def __init__(self):
        super().__init__(4)
        self.calls = 0

    def forward(self, lr):
        self.calls += 1
        if self.calls == 3:
            raise RuntimeError("simulated failure")
        return super().forward(lr)


def test_a_failure_mid_run_leaves_no_file_and_keeps_an_existing_output(engine, rgb_uint16, tmp_path):
    out = tmp_path / "out.tif"
    out.write_bytes(b"previous result")
    with pytest.raises(RuntimeError):
        engine.run(RunRequest(input=rgb_uint16, output=str(out), scale=4, tile=32, overlap=8, overwrite=True),
                   model=FailingModel())
    assert out.read_bytes() == b"previous result"
    assert sorted(os.listdir(tmp_path)) == ["out.tif", "rgb_uint16.tif"]


def test_a_model_for_another_scale_is_refused(engine, rgb_uint16, tmp_path):
    with pytest.raises(BadInput, match="x8"):
        engine.run(RunRequest(input=rgb_uint16, output=str(tmp_path / "o.tif"), scale=4), model=NearestUpscaler(8))


def test_plan_reports_size_and_refuses_when_the_disk_cannot_hold_the_output(engine, rgb_uint16, tmp_path):
    plan = engine.plan(RunRequest(input=rgb_uint16, output=str(tmp_path / "o.tif"), scale=4))
    assert (plan.width, plan.height, plan.bands, plan.dtype) == (480, 360, 3, "uint16")
    assert plan.output_bytes == 480 * 360 * 3 * 2
    shm = "/dev/shm"
    if os.path.isdir(shm) and os.access(shm, os.W_OK):
        free = os.statvfs(shm).f_bavail * os.statvfs(shm).f_frsize
        side = int((free / 3) ** 0.5 / 4) + 10  # an output larger than the free space
        big = write_raster(str(tmp_path / "big.tif"), np.zeros((3, 1, 1), np.uint8),
                           geotransform=(0, 1, 0, 0, 0, -1))
        dataset = gdal.Open(big, gdal.GA_Update)
        dataset = None
        vrt = str(tmp_path / "big.vrt")
        gdal.Translate(vrt, big, format="VRT", width=side, height=side)
        with pytest.raises(BadInput, match="free"):
            engine.plan(RunRequest(input=vrt, output=os.path.join(shm, "never.tif"), scale=4))
