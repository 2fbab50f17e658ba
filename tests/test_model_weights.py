"""Weights files: exact round trip, metadata without building, and clear errors for bad files."""

from __future__ import annotations

import json
import pickle
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from slimdiffsr_qgis.contract import BadInput
from backend.models import StudentConfig, build, load, read_metadata, save

torch.set_num_threads(1)
REPO = Path(__file__).resolve().parent.parent
PROVENANCE = {"normalisation": "percentile:2,98", "training_run": "unit-test"}


@pytest.fixture()
def weights(tmp_path):
    torch.manual_seed(0)
    model = build(StudentConfig.tiny(4)).eval()
    path = tmp_path / "student.safetensors"
    save(model, path, PROVENANCE)
    return model, path


def rewrite_config(path, target, config_json):
    tensors = load_file(str(path))
    save_file(tensors, str(target), metadata={"format": "pt", "slimdiffsr_config": config_json})
    return target


def assert_bad_input(path, *fragments):
    with pytest.raises(BadInput) as caught:
        load(path)
    message = str(caught.value)
    assert "\n" not in message and str(path) in message
    for fragment in fragments:
        assert fragment in message
    return message


def test_save_then_load_gives_bit_identical_outputs(weights):
    model, path = weights
    loaded = load(path)
    lr = torch.rand(1, 3, 10, 7)
    with torch.no_grad():
        assert torch.equal(model(lr), loaded(lr))
    assert loaded.config == model.config and not loaded.training
    assert loaded.meta == PROVENANCE


def test_read_metadata_reports_config_provenance_and_size_without_building(weights):
    model, path = weights
    info = read_metadata(path)
    assert StudentConfig.from_dict(info["config"]) == model.config
    assert info["meta"] == PROVENANCE
    assert info["parameters"] == sum(p.numel() for p in model.parameters())


def test_save_writes_no_partial_file_beside_the_target(weights):
    _, path = weights
    assert [p.name for p in path.parent.iterdir()] == [path.name]


def test_missing_file_is_bad_input(tmp_path):
    assert_bad_input(tmp_path / "nope.safetensors", "not found")


def test_pickle_file_is_refused_without_being_unpickled(tmp_path):
    marker = tmp_path / "unpickled"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    path = tmp_path / "weights.pt"
    path.write_bytes(pickle.dumps(Payload()))
    assert_bad_input(path, "not a readable safetensors")
    assert not marker.exists()


def test_torch_save_file_is_refused(tmp_path):
    path = tmp_path / "weights.pth"
    torch.save(build(StudentConfig.tiny(4)).state_dict(), path)
    assert_bad_input(path, "not a readable safetensors")


@pytest.mark.parametrize("keep", [0, 6, 100, -16])
def test_truncated_file_is_bad_input(weights, tmp_path, keep):
    _, path = weights
    data = path.read_bytes()
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(data[:keep])
    assert_bad_input(truncated, "not a readable safetensors")


def test_safetensors_without_config_is_bad_input(weights, tmp_path):
    _, path = weights
    bare = tmp_path / "bare.safetensors"
    save_file(load_file(str(path)), str(bare))
    assert_bad_input(bare, "no SlimDiffSR config")


@pytest.mark.parametrize(
    "config_json,fragment",
    [
        ("{not json", "bad SlimDiffSR config"),
        (json.dumps({"scale": 3}), "scale must be 2, 4 or 8"),
        (json.dumps({"scale": 4, "wings": 2}), "unknown config field(s): wings"),
        (json.dumps({"encoder": "hr"}), "no 'scale'"),
        (json.dumps({"scale": 4, "vae_channels": 100000}), "vae_channels 100000 is outside 1..4096"),
        (json.dumps({"scale": 4, "block_channels": [4096] * 6 + [8192]}), "7 levels; between 1 and 6"),
        (json.dumps({"scale": 4, "block_channels": [64, 5000]}), "block_channels width 5000 is outside 1..4096"),
        (json.dumps({"scale": 4, "qgam_queries": 10**9}), "qgam_queries 1000000000 is outside 1..1024"),
        (json.dumps({"scale": 4, "norm_groups": 0}), "norm_groups 0 is outside 1..512"),
        (json.dumps({"scale": 4, "layers_per_block": -1}), "layers_per_block -1 is outside 1..8"),
        (json.dumps({"scale": 4, "block_channels": "wide"}), "block_channels must be a list of integers"),
        ('{"scale": 4, "block_channels": [Infinity]}', "block_channels must be a list of integers"),
        (json.dumps({"scale": 4, "bottleneck_ratio": "half"}), "bottleneck_ratio must be a number"),
        (json.dumps({"scale": 4, "encoder": ["hr"]}), "encoder must be text"),
        ("[" * 100000 + "]" * 100000, "bad SlimDiffSR config"),
    ],
)
def test_wrong_config_is_bad_input(weights, tmp_path, config_json, fragment):
    _, path = weights
    assert_bad_input(rewrite_config(path, tmp_path / "bad.safetensors", config_json), fragment)


def test_tensors_that_do_not_match_the_config_are_bad_input(weights, tmp_path):
    _, path = weights
    other = StudentConfig.tiny(4).replace(vae_channels=8)
    mismatched = rewrite_config(path, tmp_path / "other.safetensors", json.dumps(other.to_dict()))
    assert_bad_input(mismatched, "tensors do not match the config", "wrong shape")


def test_ablation_tensors_under_the_student_config_are_bad_input(tmp_path):
    ablation = build(StudentConfig.tiny(4).replace(conv2="conv3x3"))
    save(ablation, tmp_path / "ablation.safetensors")
    mismatched = rewrite_config(
        tmp_path / "ablation.safetensors", tmp_path / "x.safetensors", json.dumps(StudentConfig.tiny(4).to_dict())
    )
    assert_bad_input(mismatched, "missing", "unexpected")


def test_provenance_must_be_strings(tmp_path):
    with pytest.raises(TypeError):
        save(build(StudentConfig.tiny(4)), tmp_path / "w.safetensors", {"epoch": 3})


def huge_config_file(path, tmp_path, **widths):
    """A tiny file (the tiny student's tensors) whose config asks for a far larger network."""
    config = {**StudentConfig.tiny(4).to_dict(), "norm_groups": 32, "attention_head_dim": 64,
              "conv1": "conv3x3", "conv2": "conv3x3", "attention": "self", **widths}
    return rewrite_config(path, tmp_path / "crafted.safetensors", json.dumps(config))


def peak_growth_of_load(path) -> tuple[float, str]:
    """(MiB the peak RSS of a fresh process grew by while `load(path)` failed, the error message)."""
    script = (
        "import resource, sys, torch; from backend.models import load\n"
        "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "try:\n    load(sys.argv[1])\nexcept Exception as error:\n    message = f'{type(error).__name__}: {error}'\n"
        "after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "print((after - before) / 1024); print(message)\n"
    )
    done = subprocess.run([sys.executable, "-c", script, str(path)], capture_output=True, text=True, timeout=120,
                          cwd=REPO)
    assert done.returncode == 0, done.stderr
    growth, message = done.stdout.strip().splitlines()
    return float(growth), message


@pytest.mark.parametrize("widths,fragment", [
    ({"vae_channels": 2**20, "mid_channels": 2**20}, "vae_channels 1048576 is outside 1..4096"),
    # Within every bound, yet about 80 GB of float32 tensors: the header's shapes refuse it before a build.
    ({"vae_channels": 4096, "block_channels": [4096, 4096, 4096], "mid_channels": 4096},
     "tensors do not match the config"),
])
def test_a_small_crafted_file_asking_for_a_huge_network_is_refused_without_allocating_it(
        weights, tmp_path, widths, fragment):
    _, path = weights
    crafted = huge_config_file(path, tmp_path, **widths)
    assert crafted.stat().st_size < 3_000_000
    started = time.perf_counter()
    growth, message = peak_growth_of_load(crafted)
    assert message.startswith("BadInput: ") and fragment in message and "\n" not in message
    assert growth < 200, f"refusing the file grew the peak RSS by {growth:.0f} MiB"
    assert time.perf_counter() - started < 60


def test_tensors_of_another_dtype_are_bad_input(weights, tmp_path):
    _, path = weights
    tensors = {name: tensor.to(torch.int32) for name, tensor in load_file(str(path)).items()}
    integers = tmp_path / "integers.safetensors"
    save_file(tensors, str(integers), metadata={"format": "pt", "slimdiffsr_config": json.dumps(
        StudentConfig.tiny(4).to_dict())})
    assert_bad_input(integers, "not floating point")


def test_info_reports_a_file_with_wrong_tensor_shapes_as_an_error(weights, tmp_path):
    _, path = weights
    mismatched = rewrite_config(path, tmp_path / "other.safetensors",
                                json.dumps(StudentConfig.tiny(4).replace(vae_channels=8).to_dict()))
    with pytest.raises(BadInput, match="wrong shape"):
        read_metadata(mismatched)
    done = subprocess.run([sys.executable, "-m", "backend.cli", "info", str(mismatched)], capture_output=True,
                          text=True, timeout=120, cwd=REPO)
    assert done.returncode == 2, done.stderr
    assert "wrong shape" in done.stderr and "other.safetensors" in done.stderr
    assert done.stdout == "", "a bad file is not described as if it were fine"
