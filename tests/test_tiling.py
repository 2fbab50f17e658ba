"""Tiling and blending, on numpy arrays without a model."""

import numpy as np
import pytest

from backend.tiling import StreamingBlender, blend_in_memory, tile_grid, tile_starts


@pytest.mark.parametrize("length,tile,overlap", [(1000, 256, 32), (300, 256, 32), (257, 256, 32), (100, 256, 32),
                                                 (513, 128, 0), (700, 64, 16)])
def test_tiles_cover_the_axis_and_the_last_one_ends_at_the_edge(length, tile, overlap):
    starts = tile_starts(length, tile, overlap)
    size = min(tile, length)
    assert starts[0] == 0
    assert starts[-1] + size == length
    for a, b in zip(starts, starts[1:]):
        assert b > a
        assert a + size - b >= overlap, "neighbours must share at least the requested overlap"


def test_tile_grid_is_row_major_with_grid_indices():
    tiles = tile_grid(300, 200, 128, 16)
    assert [(t.row, t.column) for t in tiles] == sorted((t.row, t.column) for t in tiles)
    assert {t.width for t in tiles} == {128} and {t.height for t in tiles} == {128}


def _tile_outputs(image: np.ndarray, tiles, scale: int):
    for tile in tiles:
        lr = image[:, tile.y:tile.y + tile.height, tile.x:tile.x + tile.width]
        yield tile, lr.repeat(scale, axis=1).repeat(scale, axis=2)


@pytest.mark.parametrize("width,height,tile,overlap", [(300, 200, 64, 16), (130, 70, 64, 24), (50, 40, 64, 8)])
def test_blending_tiles_that_agree_reproduces_the_image_exactly(width, height, tile, overlap):
    image = np.random.default_rng(0).random((3, height, width)).astype(np.float32)
    tiles = tile_grid(width, height, tile, overlap)
    result = blend_in_memory(width, height, tile, overlap, 2, 3, _tile_outputs(image, tiles, 2))
    np.testing.assert_allclose(result, image.repeat(2, axis=1).repeat(2, axis=2), atol=1e-6)


def test_every_output_pixel_is_emitted_exactly_once():
    width, height, scale = 200, 150, 3
    blender = StreamingBlender(width, height, 64, 16, scale, 1)
    hits = np.zeros((height * scale, width * scale), dtype=int)
    for tile in blender.tiles:
        for block in blender.add(tile, np.ones((1, tile.height * scale, tile.width * scale), np.float32)):
            _, h, w = block.values.shape
            hits[block.y:block.y + h, block.x:block.x + w] += 1
    assert (hits == 1).all()
    assert blender.done


def test_overlapping_tiles_are_ramped_so_tile_edges_do_not_show():
    """Two tiles that disagree meet smoothly: no step larger than the ramp allows."""
    width, height, tile, overlap = 112, 64, 64, 16
    tiles = tile_grid(width, height, tile, overlap)
    outputs = ((t, np.full((1, t.height, t.width), float(t.column), np.float32)) for t in tiles)
    row = blend_in_memory(width, height, tile, overlap, 1, 1, outputs)[0, 0]
    assert row[0] == 0 and row[-1] == 1
    assert np.abs(np.diff(row)).max() < 0.25, "the switch between tiles must be spread over the overlap"


@pytest.mark.parametrize("height", [500, 2000, 8000])
def test_pending_memory_is_one_overlap_band_whatever_the_raster_height(height):
    width, tile, overlap, scale = 300, 64, 16, 2
    blender = StreamingBlender(width, height, tile, overlap, scale, 1)
    peak = 0
    for t in blender.tiles:
        blender.add(t, np.zeros((1, tile * scale, tile * scale), np.float32))
        peak = max(peak, sum(cell[0].size for cell in blender._pending.values()))
    band = (width * scale) * (2 * overlap * scale)
    assert peak <= band + 2 * (tile * scale) ** 2


def test_a_window_that_fits_one_tile_is_one_tile():
    from backend.tiling import choose_tile

    assert choose_tile(300, 200, 32, largest=512) == 300


def test_the_chosen_tile_covers_the_window_with_the_fewest_model_pixels():
    from backend.tiling import choose_tile

    def pixels(side: int) -> int:
        return len(tile_starts(2048, side, 32)) ** 2 * side ** 2

    chosen = choose_tile(2048, 2048, 32, largest=512, multiple=4, smallest=256)
    assert 256 <= chosen <= 512 and chosen % 4 == 0
    assert pixels(chosen) < min(pixels(512), pixels(256)) and pixels(chosen) < 1.15 * 2048 ** 2
