"""A config's data options reach the training dataset: none of them may be silently ignored."""

from __future__ import annotations

import pytest

from slimdiffsr_qgis.contract import BadInput
from training.data.datasets import training_dataset


def config(**data) -> dict:
    return {"output_dir": "runs/unused", "scale": 4, "normalisation": "percentile:2,98",
            "data": {"folder": "resources/sample", "crop": 64, "length": 8, "degraded_fraction": 1.0, **data}}


def test_the_degradation_chain_named_in_the_config_makes_the_lr():
    assert {training_dataset(config(degradation="sensor"))[i]["lr_kind"] for i in range(4)} == {"sensor"}
    assert {training_dataset(config())[i]["lr_kind"] for i in range(4)} == {"realesrgan"}


def test_an_excluded_sensor_family_is_left_out_of_training():
    with pytest.raises((BadInput, ValueError)):
        training_dataset(config(exclude_sensors=["sample"]))[0]


def test_single_band_crops_need_the_manifest_that_lists_the_bands():
    with pytest.raises(BadInput, match="single_band_fraction"):
        training_dataset(config(single_band_fraction=0.5))
