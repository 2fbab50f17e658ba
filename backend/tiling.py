"""Split a window into overlapping LR tiles and blend their HR outputs back, streaming.

Pure numpy, no model and no GDAL: the engine feeds tile outputs in order and
gets back finished output blocks, so peak memory is set by the tile batch and
one overlap band, never by the size of the raster.

Blending: each tile's weight is 1 except on edges it shares with a neighbour,
where a smooth ramp runs across the shared band. The ramp is zero over the
outer quarter of the band (pixels whose model input was cut by the tile edge),
rises over the middle half and is one over the inner quarter; neighbours use
the mirrored ramp over the same band, so a model whose receptive field is
within a quarter of the overlap gives exactly the single-pass result. Raster
borders get no falloff. Weights are normalised by their sum, so bands shared
by three tiles (possible on small rasters) stay correct.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterator

import numpy as np

WEIGHT_FLOOR = 1e-8


@dataclass(frozen=True)
class Tile:
    """An LR tile: column/row offset and size inside the window, plus its grid index."""

    x: int
    y: int
    width: int
    height: int
    column: int
    row: int


@dataclass(frozen=True)
class Block:
    """A finished HR output block: offset in output pixels and its values [C, h, w]."""

    x: int
    y: int
    values: np.ndarray


def tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Offsets of tiles along one axis: evenly spaced, the last one ending at the edge.

    Uses the fewest tiles whose shared bands are all at least `overlap` wide, then
    spreads them evenly, so no tile overlaps its neighbour by much more than asked
    (a last tile merely pushed back to the edge can overlap almost completely,
    which costs time and, for the streaming blender, memory).
    """
    size = min(tile, length)
    if size >= length:
        return [0]
    step = size - overlap
    count = math.ceil((length - size) / step) + 1
    return [round(i * (length - size) / (count - 1)) for i in range(count)]


def tile_grid(width: int, height: int, tile: int, overlap: int) -> list[Tile]:
    """All tiles of a width x height window in row-major order."""
    xs = tile_starts(width, tile, overlap)
    ys = tile_starts(height, tile, overlap)
    tw, th = min(tile, width), min(tile, height)
    return [Tile(x, y, tw, th, c, r) for r, y in enumerate(ys) for c, x in enumerate(xs)]


def choose_tile(width: int, height: int, overlap: int, largest: int, multiple: int = 1, smallest: int = 16) -> int:
    """The square tile side, from `smallest` to `largest`, whose grid covers the window with the fewest
    model pixels.

    A window that fits in one tile is one tile (no seams, no shared statistics). Otherwise sides from
    `largest` down to `smallest` are tried and the cheapest grid wins, counting each tile at its size
    rounded up to `multiple` (the model pads to it): tiles are spread evenly, so a 2048 px window in
    tiles of 436 with 32 px overlap computes 1.13x the window, in tiles of 512 1.56x.
    """
    if max(width, height) <= largest:
        return max(width, height)

    def cost(side: int) -> int:
        columns, rows = len(tile_starts(width, side, overlap)), len(tile_starts(height, side, overlap))
        padded = lambda length: -(-min(side, length) // multiple) * multiple
        return columns * rows * padded(width) * padded(height)

    smallest = max(2 * overlap + multiple, multiple, smallest)
    sides = range(largest - largest % multiple or largest, smallest - 1, -multiple)
    return min(sides, key=lambda side: (cost(side), -side)) if sides else largest


def _ramp(length: int) -> np.ndarray:
    """Weights rising from 0 to 1 across a shared band of `length` pixels."""
    position = (np.arange(length, dtype=np.float64) + 0.5) / length
    t = np.clip((position - 0.25) / 0.5, 0.0, 1.0)
    return 0.5 - 0.5 * np.cos(np.pi * t)


def _axis_weights(starts: list[int], size: int, scale: int) -> list[np.ndarray]:
    """Per tile along one axis, its blending weights divided by the sum of all tiles' weights.

    Tiles form a grid, so a pixel's total weight is the product of the row and
    column sums: normalising each axis once makes every cell's weighted sum
    final as soon as its last tile arrives, with no weight accumulator.
    """
    raw = []
    for index, start in enumerate(starts):
        weights = np.ones(size * scale, dtype=np.float64)
        if index > 0:
            shared = (starts[index - 1] + size - start) * scale
            weights[:shared] *= _ramp(shared)
        if index < len(starts) - 1:
            shared = (start + size - starts[index + 1]) * scale
            weights[size * scale - shared:] *= _ramp(shared)[::-1]
        raw.append(np.maximum(weights, WEIGHT_FLOOR))
    total = np.zeros((starts[-1] + size) * scale, dtype=np.float64)
    for start, weights in zip(starts, raw):
        total[start * scale:(start + size) * scale] += weights
    return [weights / total[start * scale:(start + size) * scale] for start, weights in zip(starts, raw)]


class StreamingBlender:
    """Accumulates weighted HR tile outputs and emits each output region once it is final.

    The output plane is cut into cells along every tile edge; a cell is final
    when every tile that covers it has been added. Cells live only while
    partially covered, so memory holds about one overlap band of the output
    (C channels, no weight planes). Sums are float32, enough for outputs that
    are rounded to integers; `exact` sums in float64 so that tiles which agree
    reproduce float32 values bit for bit.
    """

    def __init__(self, width: int, height: int, tile: int, overlap: int, scale: int, channels: int,
                 exact: bool = False):
        self.scale = scale
        self._sum_dtype = np.float64 if exact else np.float32
        self.channels = channels
        self.tiles = tile_grid(width, height, tile, overlap)
        self._xs = tile_starts(width, tile, overlap)
        self._ys = tile_starts(height, tile, overlap)
        self.columns = len(self._xs)
        self._size = (min(tile, width), min(tile, height))
        self._x_cuts = sorted({x for s in self._xs for x in (s, s + self._size[0])})
        self._y_cuts = sorted({y for s in self._ys for y in (s, s + self._size[1])})
        self._weights_x = _axis_weights(self._xs, self._size[0], scale)
        self._weights_y = _axis_weights(self._ys, self._size[1], scale)
        self._pending: dict[tuple[int, int], np.ndarray] = {}
        self._remaining = self._coverage()

    def window_rows(self, first: int, stop: int) -> tuple[int, int, int]:
        """For tile rows first..stop-1 of the grid: the LR rows (y0, y1) of the output cells those tiles
        finish (a cell is finished by the last tile row that covers it), and the first tile row those
        cells need (rows above `first` whose tiles reach into them: the window's halo).

        Running only the tiles of rows halo..stop-1 through this blender finishes exactly those cells
        with the same sums, in the same order, as a run over every tile: so windows of one raster,
        run anywhere, assemble into the single run's values.
        """
        th = self._size[1]
        cells = [(y0, y1) for y0, y1 in zip(self._y_cuts, self._y_cuts[1:])]
        covering = [[r for r, y in enumerate(self._ys) if y <= y0 and y1 <= y + th] for y0, y1 in cells]
        owned = [(cell, rows) for cell, rows in zip(cells, covering) if first <= rows[-1] < stop]
        if not owned:
            raise ValueError(f"tile rows {first}..{stop - 1} are outside the grid's {len(self._ys)} rows")
        return owned[0][0][0], owned[-1][0][1], min(rows[0] for _, rows in owned)

    @property
    def rows(self) -> int:
        """Tile rows of the grid."""
        return len(self._ys)

    def _coverage(self) -> dict[tuple[int, int], int]:
        count: dict[tuple[int, int], int] = {}
        for tile in self.tiles:
            for cell in self._cells_of(tile):
                count[cell] = count.get(cell, 0) + 1
        return count

    def _cells_of(self, tile: Tile) -> Iterator[tuple[int, int]]:
        for j in range(self._y_cuts.index(tile.y), self._y_cuts.index(tile.y + tile.height)):
            for i in range(self._x_cuts.index(tile.x), self._x_cuts.index(tile.x + tile.width)):
                yield (i, j)

    def add(self, tile: Tile, output: np.ndarray) -> list[Block]:
        """Add one tile's HR output [C, h*s, w*s]; return the blocks this made final."""
        s = self.scale
        expected = (self.channels, tile.height * s, tile.width * s)
        if output.shape != expected:
            raise ValueError(f"tile output has shape {output.shape}, expected {expected}")
        wy, wx = self._weights_y[tile.row], self._weights_x[tile.column]
        finished = []
        for i, j in self._cells_of(tile):
            x0, x1 = self._x_cuts[i], self._x_cuts[i + 1]
            y0, y1 = self._y_cuts[j], self._y_cuts[j + 1]
            rows = slice((y0 - tile.y) * s, (y1 - tile.y) * s)
            cols = slice((x0 - tile.x) * s, (x1 - tile.x) * s)
            weight = np.outer(wy[rows], wx[cols]).astype(self._sum_dtype, copy=False)
            contribution = output[:, rows, cols].astype(self._sum_dtype) * weight
            total = self._pending.get((i, j))
            if total is None:
                self._pending[(i, j)] = contribution
            else:
                total += contribution
            self._remaining[(i, j)] -= 1
            if self._remaining[(i, j)] == 0:
                finished.append(Block(x0 * s, y0 * s, self._pending.pop((i, j)).astype(np.float32)))
        return finished

    @property
    def done(self) -> bool:
        """True once every cell has been emitted."""
        return not self._pending and all(v == 0 for v in self._remaining.values())


def blend_in_memory(width: int, height: int, tile: int, overlap: int, scale: int, channels: int,
                    outputs: Iterator[tuple[Tile, np.ndarray]]) -> np.ndarray:
    """Blend all tile outputs into one array [C, H*s, W*s]; for arrays that fit in memory."""
    result = np.zeros((channels, height * scale, width * scale), dtype=np.float32)
    blender = StreamingBlender(width, height, tile, overlap, scale, channels, exact=True)
    for tile, output in outputs:
        for block in blender.add(tile, output):
            _, h, w = block.values.shape
            result[:, block.y:block.y + h, block.x:block.x + w] = block.values
    return result
