"""Which input bands go through the 3-channel model together: the band passes of a run.

The model sees three channels. A colour triplet goes through it together (its
channels depend on each other, as in the images the model learnt from); every
other band goes through alone, replicated to the three channels, and its output
is the mean of the three output channels. Pure: no GDAL, so it is tested on
plain band lists.
"""

from __future__ import annotations

from typing import Optional, Sequence

from slimdiffsr_qgis.contract import BadInput

COLOUR_ORDER = ("red", "green", "blue")


def plan_passes(selected: Sequence[int], colours: Sequence[str],
                rgb: Optional[Sequence[int]] = None) -> list[tuple[int, ...]]:
    """The model passes over the `selected` bands: the colour triplet first (if any), then each other band alone.

    selected: 1-based input bands written to the output, in order.
    colours: the colour interpretation of every band of the raster ("red", "gray",
        "undefined", ...; colours[0] is band 1's), so len(colours) is the band count.
    rgb: the triplet the user named; None lets the raster choose: the bands
        interpreted as red, green and blue when all three are selected, else
        bands 1,2,3 of a 3- or 4-band raster when all three are selected, else
        the selected bands when there are exactly three of them.
    """
    if rgb is not None:
        missing = [band for band in rgb if band not in selected]
        if missing:
            raise BadInput(f"rgb band(s) {missing} are not among the written bands {list(selected)}; "
                           "name three of the written bands")
        triplet: Optional[tuple[int, ...]] = tuple(rgb)
    else:
        triplet = _default_triplet(selected, colours)
    passes = [triplet] if triplet is not None else []
    return passes + [(band,) for band in selected if triplet is None or band not in triplet]


def _default_triplet(selected: Sequence[int], colours: Sequence[str]) -> Optional[tuple[int, ...]]:
    first_of: dict[str, int] = {}
    for band, colour in enumerate(colours, start=1):
        first_of.setdefault(colour.lower(), band)
    interpreted = tuple(first_of.get(colour) for colour in COLOUR_ORDER)
    if all(band in selected for band in interpreted):
        return interpreted  # type: ignore[return-value]
    if len(colours) in (3, 4) and all(band in selected for band in (1, 2, 3)):
        return (1, 2, 3)
    if len(selected) == 3:
        return tuple(selected)
    return None
