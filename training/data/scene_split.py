"""Split a scene into spatially disjoint train / validation / test blocks separated by a gap.

Held-out pixels must not leak into training through overlapping or touching
crops, so every training block keeps at least `gap` pixels (one crop) away from
every validation and test block, and validation keeps the same distance from
test. The split is a grid of cells: held-out cells are drawn by a seeded
permutation among the cells a caller marks usable (e.g. not cloud or nodata),
and each lower-priority cell is trimmed by `gap` on every side that faces a
higher-priority neighbour (test > validation > train).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

ROLES = ("train", "validation", "test")
_PRIORITY = {"train": 0, "validation": 1, "test": 2}


@dataclass(frozen=True)
class Block:
    """A rectangle of scene pixels: offset and size."""

    x: int
    y: int
    width: int
    height: int

    def as_list(self) -> list[int]:
        """[x, y, width, height], the manifest's form."""
        return [self.x, self.y, self.width, self.height]


def separation(a: Block, b: Block) -> int:
    """Pixels between two blocks along the axis where they are furthest apart (0 when they touch or overlap)."""
    dx = max(b.x - (a.x + a.width), a.x - (b.x + b.width), 0)
    dy = max(b.y - (a.y + a.height), a.y - (b.y + b.height), 0)
    return max(dx, dy)


def check_separation(blocks: dict[str, list[Block]], gap: int) -> None:
    """Raise ValueError when blocks of two different roles are closer than `gap` pixels."""
    for i, first in enumerate(ROLES):
        for second in ROLES[i + 1:]:
            for a in blocks.get(first, []):
                for b in blocks.get(second, []):
                    if separation(a, b) < gap:
                        raise ValueError(f"{first} block {a.as_list()} is within {gap} px "
                                         f"of {second} block {b.as_list()}")


def split_scene(width: int, height: int, *, cell: int, gap: int, seed: int,
                usable: np.ndarray | None = None, excluded: np.ndarray | None = None,
                held_out_fraction: float = 0.15, min_side: int | None = None) -> dict[str, list[Block]]:
    """Blocks of each role for a `width` x `height` scene.

    cell: nominal grid cell side in pixels (cells absorb the remainder, so the
        grid covers the scene). usable: [rows, cols] bool grid (see `grid_shape`);
        held-out cells are drawn only among usable cells. excluded: [rows, cols]
        bool grid of cells that get no role (e.g. nodata collars). held_out_fraction:
        share of usable cells for validation and again for test (at least one
        each). min_side: blocks trimmed below this side are dropped (default: gap).
    Raises ValueError when the scene has fewer than three usable cells: such a
    scene is too small to split and should be given one role as a whole.
    """
    rows, cols = grid_shape(width, height, cell)
    usable = np.ones((rows, cols), bool) if usable is None else np.asarray(usable, bool)
    excluded = np.zeros((rows, cols), bool) if excluded is None else np.asarray(excluded, bool)
    if usable.shape != (rows, cols) or excluded.shape != (rows, cols):
        raise ValueError(f"usable/excluded grids have shapes {usable.shape}/{excluded.shape}, expected {(rows, cols)}")
    usable = usable & ~excluded
    candidates = np.flatnonzero(usable.ravel())
    if candidates.size < 3:
        raise ValueError(f"a {width}x{height} scene has {candidates.size} usable cells of {cell} px; "
                         "it needs at least 3 to split, give it one role as a whole")
    held = max(1, int(round(held_out_fraction * candidates.size)))
    held = min(held, (candidates.size - 1) // 2)
    order = np.random.default_rng(seed).permutation(candidates)
    roles = np.full(rows * cols, "train", dtype=object)
    roles[order[:held]] = "test"
    roles[order[held:2 * held]] = "validation"
    roles[excluded.ravel()] = None
    roles = roles.reshape(rows, cols)

    xs = np.linspace(0, width, cols + 1).round().astype(int)
    ys = np.linspace(0, height, rows + 1).round().astype(int)
    min_side = gap if min_side is None else min_side
    blocks: dict[str, list[Block]] = {role: [] for role in ROLES}
    for r in range(rows):
        for c in range(cols):
            role = roles[r, c]
            if role is None:
                continue
            x0, x1, y0, y1 = xs[c], xs[c + 1], ys[r], ys[r + 1]
            for dr in (-1, 0, 1):
                for dc in (-1, 0, 1):
                    nr, nc = r + dr, c + dc
                    if (dr, dc) == (0, 0) or not (0 <= nr < rows and 0 <= nc < cols) or roles[nr, nc] is None:
                        continue
                    if _PRIORITY[roles[nr, nc]] <= _PRIORITY[role]:
                        continue
                    # A diagonal neighbour is kept away by trimming the x side alone.
                    if dc == -1:
                        x0 = max(x0, xs[c] + gap)
                    elif dc == 1:
                        x1 = min(x1, xs[c + 1] - gap)
                    elif dr == -1:
                        y0 = max(y0, ys[r] + gap)
                    else:
                        y1 = min(y1, ys[r + 1] - gap)
            if x1 - x0 >= min_side and y1 - y0 >= min_side:
                blocks[role].append(Block(int(x0), int(y0), int(x1 - x0), int(y1 - y0)))
    check_separation(blocks, gap)
    return blocks


def grid_shape(width: int, height: int, cell: int) -> tuple[int, int]:
    """(rows, cols) of the cell grid `split_scene` lays over a scene."""
    return max(1, height // cell), max(1, width // cell)


def whole_scene(width: int, height: int, role: str) -> dict[str, list[Block]]:
    """A scene too small to split, given entirely to one role."""
    if role not in ROLES:
        raise ValueError(f"unknown role {role!r}; use one of {', '.join(ROLES)}")
    return {r: ([Block(0, 0, width, height)] if r == role else []) for r in ROLES}
