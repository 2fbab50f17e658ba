"""Band passes: which bands go through the 3-channel model together, which alone."""

import pytest

from backend.bands import plan_passes
from slimdiffsr_qgis.contract import BadInput

RGB = ("red", "green", "blue")


@pytest.mark.parametrize("selected,colours,rgb,expected", [
    ((1,), ("gray",), None, [(1,)]),
    ((1, 2, 3), RGB, None, [(1, 2, 3)]),
    ((1, 2, 3, 4), ("blue", "green", "red", "undefined"), None, [(3, 2, 1), (4,)]),
    ((4, 1, 2, 3), RGB + ("alpha",), None, [(1, 2, 3), (4,)]),
    ((1, 2, 3, 4), ("undefined",) * 4, None, [(1, 2, 3), (4,)]),
    ((2, 3, 4), ("undefined",) * 4, None, [(2, 3, 4)]),
    ((1, 2), ("gray", "undefined"), None, [(1,), (2,)]),
    ((1, 2, 3, 4, 5), ("undefined",) * 5, None, [(1,), (2,), (3,), (4,), (5,)]),
    ((4, 3, 2, 8), ("undefined",) * 13, None, [(4,), (3,), (2,), (8,)]),
    ((1, 2, 4), ("blue", "green", "red", "undefined"), None, [(1, 2, 4)]),
    ((1, 2, 3, 4, 5), ("undefined",) * 5, (5, 3, 1), [(5, 3, 1), (2,), (4,)]),
])
def test_a_colour_triplet_goes_through_together_and_every_other_band_alone(selected, colours, rgb, expected):
    assert plan_passes(selected, colours, rgb) == expected


def test_every_selected_band_is_in_exactly_one_pass():
    selected = (5, 1, 4, 2, 3)
    passes = plan_passes(selected, ("red", "green", "blue", "undefined", "undefined"))
    assert sorted(band for bands in passes for band in bands) == sorted(selected)


def test_a_triplet_outside_the_written_bands_is_refused():
    with pytest.raises(BadInput, match="not among the written bands"):
        plan_passes((1, 2), ("undefined",) * 3, (1, 2, 3))
