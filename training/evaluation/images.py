"""The HR images an evaluation scores: fixed-size tiles of the held-out blocks, or each block whole.

Tiles (`training.data.crops.evaluation_tiles`) give every image the same size,
so per-image figures average evenly and a small model card run stays quick.
The paper scores whole test images instead; here the whole image is a
held-out block, read at once and cropped to a multiple of the scale so its
LR has whole pixels. Both skip an image with nodata or with more than
MAX_BRIGHT_SHARE cloud-bright pixels, the rule training crops follow.
"""

from __future__ import annotations

from typing import Iterator, Sequence

from training.data.crops import (DEFAULT_SPEC, MAX_BRIGHT_SHARE, EvaluationTile, SceneReader, SceneRef,
                                 evaluation_tiles)
from training.data.scene_split import ROLES


def whole_blocks(scenes: Sequence[SceneRef], role: str, scale: int,
                 spec: str = DEFAULT_SPEC) -> Iterator[EvaluationTile]:
    """Each `role` block of the scenes, whole (cropped to a multiple of `scale`), in scene and block order."""
    if role not in ROLES:
        raise ValueError(f"unknown role {role!r}; use one of {', '.join(ROLES)}")
    reader = SceneReader(scenes, spec)
    for scene in scenes:
        for block in scene.blocks.get(role, []):
            width, height = block.width - block.width % scale, block.height - block.height % scale
            if not width or not height:
                continue
            values, missing, bright = reader.read(scene, block.x, block.y, width, height)
            if missing.any() or bright.mean() > MAX_BRIGHT_SHARE:
                continue
            yield EvaluationTile(scene.name, scene.sensor, block.x, block.y, values)


def held_out_images(scenes: Sequence[SceneRef], role: str, scale: int, tile: int, whole: bool = False,
                    spec: str = DEFAULT_SPEC) -> Iterator[EvaluationTile]:
    """The `role` images of the scenes: each block whole when `whole`, else its `tile` px tiles."""
    if whole:
        return whole_blocks(scenes, role, scale, spec)
    return evaluation_tiles(scenes, role=role, tile=tile, spec=spec)
