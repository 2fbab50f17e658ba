"""`check`: consistency figures of a super-resolved file against its input, for this tool's outputs and others'."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from osgeo import gdal

from backend.check import check_files
from backend.engine import Engine
from backend.resources import sample_raster_path
from rasters import read_raster
from slimdiffsr_qgis.contract import BadInput, RunRequest


def shifted(values: np.ndarray, dx: float, dy: float) -> np.ndarray:
    """[C, H, W] moved right by dx and down by dy pixels (bicubic, edges repeated)."""
    _, height, width = values.shape
    ys, xs = torch.meshgrid(torch.arange(height, dtype=torch.float64), torch.arange(width, dtype=torch.float64),
                            indexing="ij")
    grid = torch.stack([(xs - dx) / (width - 1) * 2 - 1, (ys - dy) / (height - 1) * 2 - 1], dim=-1)[None].float()
    image = torch.from_numpy(values.astype(np.float32))[None]
    moved = torch.nn.functional.grid_sample(image, grid, mode="bicubic", padding_mode="border", align_corners=True)
    return moved[0].numpy()


@pytest.fixture(scope="module")
def shipped_output(tmp_path_factory) -> tuple[str, str]:
    """The shipped student's x4 output of a 96 x 96 crop of the real Sentinel-2 sample."""
    folder = tmp_path_factory.mktemp("check")
    crop = str(folder / "crop.tif")
    gdal.Translate(crop, str(sample_raster_path()), srcWin=[40, 40, 96, 96])
    output = str(folder / "crop_x4.tif")
    Engine().run(RunRequest(input=crop, output=output, device="cpu"))
    return crop, output


def test_the_shipped_students_output_is_consistent_and_unshifted(shipped_output):
    crop, output = shipped_output
    figures = check_files(output, crop)
    assert figures.mean_abs_difference_fraction < 0.05
    assert figures.spectral_angle_degrees < 5
    assert abs(figures.shift_x) < 0.1 and abs(figures.shift_y) < 0.1


def test_a_deliberately_shifted_output_reports_its_shift_within_a_tenth_of_an_input_pixel(shipped_output, tmp_path):
    crop, output = shipped_output
    values, geotransform, wkt, _, _ = read_raster(output)
    moved = tmp_path / "moved.tif"
    dataset = gdal.GetDriverByName("GTiff").Create(str(moved), values.shape[2], values.shape[1], values.shape[0],
                                                   gdal.GDT_Float32)
    dataset.SetGeoTransform(geotransform)
    dataset.SetProjection(wkt)
    for index, plane in enumerate(shifted(values, 4 * 0.3, -4 * 0.25)):
        dataset.GetRasterBand(index + 1).WriteArray(plane)
    dataset = None
    figures = check_files(str(moved), crop)
    assert figures.shift_x == pytest.approx(0.3, abs=0.1)
    assert figures.shift_y == pytest.approx(-0.25, abs=0.1)


def test_an_output_on_a_grid_that_does_not_divide_the_inputs_is_refused(shipped_output, tmp_path):
    crop, output = shipped_output
    odd = str(tmp_path / "odd.tif")
    gdal.Translate(odd, output, xRes=3.3, yRes=3.3)
    with pytest.raises(BadInput, match="whole fraction"):
        check_files(odd, crop)
