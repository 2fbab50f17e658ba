"""Held-out blocks: disjoint roles with a gap of at least one crop, seeded, and sensible for small scenes."""

from __future__ import annotations

import numpy as np
import pytest

from training.data.scene_split import ROLES, Block, check_separation, grid_shape, separation, split_scene, whole_scene


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("size", [(1933, 1947), (2006, 1515), (700, 900)])
def test_blocks_of_different_roles_keep_one_crop_apart(seed, size):
    blocks = split_scene(*size, cell=192, gap=64, seed=seed)
    for first in ROLES:
        for second in ROLES:
            if first == second:
                continue
            for a in blocks[first]:
                for b in blocks[second]:
                    assert separation(a, b) >= 64


def test_every_role_gets_blocks_and_blocks_stay_inside_the_scene():
    blocks = split_scene(1000, 800, cell=200, gap=50, seed=3)
    assert all(blocks[role] for role in ROLES)
    for items in blocks.values():
        for b in items:
            assert b.x >= 0 and b.y >= 0 and b.x + b.width <= 1000 and b.y + b.height <= 800
            assert min(b.width, b.height) >= 50


def test_same_seed_gives_same_split_and_another_seed_another():
    first = split_scene(1200, 1200, cell=200, gap=50, seed=7)
    assert first == split_scene(1200, 1200, cell=200, gap=50, seed=7)
    assert first["test"] != split_scene(1200, 1200, cell=200, gap=50, seed=8)["test"]


def test_held_out_cells_are_drawn_only_among_usable_cells():
    rows, cols = grid_shape(1000, 1000, 200)
    usable = np.zeros((rows, cols), bool)
    usable[0, :] = True
    blocks = split_scene(1000, 1000, cell=200, gap=50, seed=0, usable=usable)
    for role in ("validation", "test"):
        assert blocks[role] and all(b.y == 0 for b in blocks[role])


def test_excluded_cells_get_no_block():
    rows, cols = grid_shape(1000, 1000, 200)
    excluded = np.zeros((rows, cols), bool)
    excluded[4, :] = True
    blocks = split_scene(1000, 1000, cell=200, gap=50, seed=0, excluded=excluded)
    assert all(b.y + b.height <= 800 for items in blocks.values() for b in items)


def test_scene_too_small_to_split_is_refused_and_can_be_given_one_role():
    with pytest.raises(ValueError, match="one role"):
        split_scene(400, 400, cell=384, gap=128, seed=0)
    blocks = whole_scene(400, 400, "test")
    assert blocks == {"train": [], "validation": [], "test": [Block(0, 0, 400, 400)]}


def test_check_separation_names_blocks_that_are_too_close():
    with pytest.raises(ValueError, match="within 10 px"):
        check_separation({"train": [Block(0, 0, 10, 10)], "test": [Block(15, 0, 10, 10)]}, gap=10)
