"""The human summary of a student: tables that add up, and a description of a weights file."""

from __future__ import annotations

import pytest
import torch

from slimdiffsr_qgis.contract import BadInput
from backend.models import StudentConfig, build, save
from backend.models.summary import describe, operator_table, parameter_table

torch.set_num_threads(1)


@pytest.mark.parametrize("config", [StudentConfig.paper(4), StudentConfig.tiny(8).replace(attention="self")])
def test_module_rows_add_up_to_the_total(config):
    rows = parameter_table(config)
    assert rows[-1][0] == "total"
    assert sum(count for _, count in rows[:-1]) == rows[-1][1]


def test_operator_rows_add_up_to_the_model_size():
    config = StudentConfig.paper(8)
    assert sum(count for _, count in operator_table(config)) == parameter_table(config)[-1][1]


def test_ablation_tables_show_the_swapped_operator_only():
    labels = [name for name, _ in operator_table(StudentConfig.paper(4).replace(attention="self"))]
    assert any("self-attention" in name for name in labels)
    assert not any(name.startswith("QGAM") for name in labels)


def test_describe_names_scale_size_config_and_provenance(tmp_path):
    path = tmp_path / "w.safetensors"
    save(build(StudentConfig.tiny(8)), path, {"normalisation": "fixed:0,10000", "data": "Sentinel-2 L2A"})
    text = describe(path)
    for fragment in ("scale: x8", "0.57 M (566,147)", "encoder=hr", "normalisation: fixed:0,10000",
                     "data: Sentinel-2 L2A", "unet.mid_block", "total"):
        assert fragment in text


def test_describe_of_a_bad_file_is_bad_input(tmp_path):
    path = tmp_path / "w.safetensors"
    path.write_bytes(b"not weights")
    with pytest.raises(BadInput):
        describe(path)
