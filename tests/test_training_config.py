"""Training configs are read through dataclasses: every shipped file loads, a misspelt or mistyped key is refused
by name, `base:` merges configs, and the recipe folders chain each step to the previous step's product."""

from __future__ import annotations

import dataclasses
import inspect
import typing
from pathlib import Path

import pytest
import yaml

from slimdiffsr_qgis.contract import BadInput
from training.data.crops import CropDataset
from training.data.datasets import DataSettings
from training.runtime import recipe
from training.runtime.config import RunSettings, load_config, run_settings, save_run_config, typed_section
from training.runtime.schema import SECTIONS, check_config
from training.stages.student import StudentSettings

CONFIGS = Path(__file__).resolve().parent.parent / "training" / "configs"
PAPER_X4 = CONFIGS / "paper_x4.yaml"
TINY = CONFIGS / "tiny_cpu.yaml"


def write(path: Path, content: dict) -> Path:
    path.write_text(yaml.safe_dump(content), encoding="utf-8")
    return path


@pytest.mark.parametrize("path", sorted(CONFIGS.rglob("*.yaml")), ids=lambda p: str(p.relative_to(CONFIGS)))
def test_every_shipped_config_loads_and_passes_the_check(path):
    config = load_config(path)
    check_config(config)
    assert "base" not in config


def test_every_section_the_top_level_accepts_is_checked_by_its_own_dataclass():
    hints = typing.get_type_hints(RunSettings)
    sections = {item.name for item in dataclasses.fields(RunSettings) if hints[item.name] == typing.Optional[dict]}
    assert sections == set(SECTIONS)


@pytest.mark.parametrize("key", [
    "outptu_dir", "data.degraded_fracton", "backbone.sorce", "uncertainty.modle", "uncertainty.model.widht",
    "uncertainty.loop.stpes", "teacher.tv_wieght", "teacher.model.unet_lora_rnak", "teacher.weights.l2",
    "teacher.loop.critic_rl", "student.wieghts", "student.weights.mmdd", "student.loop.ema_decya",
    "student.config.lr_skp", "evaluate.limt",
])
def test_a_misspelt_key_in_any_section_is_refused_by_name(key):
    with pytest.raises(BadInput, match=key.rsplit(".", 1)[-1]) as refused:
        check_config(load_config(PAPER_X4, [f"{key}=1"]))
    section = key.rsplit(".", 1)[0] if "." in key else "the training config"
    assert section in str(refused.value)


@pytest.mark.parametrize("override, message", [
    ("student.loop.steps=many", "student.loop.steps must be a whole number"),
    ("allow_fallbacks=sometimes", "allow_fallbacks must be true or false"),
    ("data.crop=big", "data.crop must be a whole number"),
    ("student.weights.mse=high", "student.weights.mse must be a number"),
    ("student.mmd_bandwidths=1", "student.mmd_bandwidths must be a list"),
    ("student=fast", "student must be a mapping"),
    ("data.degradation=jpeg", "unknown degradation 'jpeg'"),
    ("student.keep=best", "student.keep must be one of ema, generator"),
    ("scale=3", "scale 3 is not supported"),
])
def test_a_mistyped_value_is_refused_by_name(override, message):
    with pytest.raises(BadInput, match=message):
        check_config(load_config(PAPER_X4, [override]))


def test_overrides_keep_working_and_yaml_numbers_without_a_dot_are_numbers():
    config = load_config(PAPER_X4, ["student.loop.lr=5e-5", "data.seed=7", "max_minutes=30"])
    check_config(config)
    assert typed_section(StudentSettings, config, "student").loop.lr == 5e-5
    assert typed_section(DataSettings, config, "data").seed == 7 and run_settings(config).max_minutes == 30


def test_keeping_the_ema_needs_an_ema():
    with pytest.raises(BadInput, match="keep: generator"):
        check_config(load_config(TINY, ["student.loop.ema_decay=0"]))
    check_config(load_config(TINY, ["student.loop.ema_decay=0", "student.keep=generator"]))


def test_the_data_section_and_the_crop_dataset_share_their_defaults():
    parameters = inspect.signature(CropDataset).parameters
    data = DataSettings()
    keyword = {"degradation": "degradation_kind"}
    for name in ("crop", "length", "seed", "degraded_fraction", "degradation", "single_band_fraction",
                 "exclude_sensors"):
        assert getattr(data, name) == parameters[keyword.get(name, name)].default, name


def test_a_config_extends_its_base_with_a_deep_merge(tmp_path):
    (tmp_path / "sub").mkdir()
    child = write(tmp_path / "sub" / "child.yaml", {
        "base": "../base.yaml", "output_dir": "runs/child",
        "student": {"loop": {"steps": 7}, "weights": {"mse": 1.0}},
    })
    write(tmp_path / "base.yaml", {"base": str(TINY)})
    config = load_config(child, ["student.loop.lr=0.001"])
    tiny = load_config(TINY)
    assert config["output_dir"] == "runs/child"
    assert config["student"]["loop"] == {**tiny["student"]["loop"], "steps": 7, "lr": 0.001}
    assert config["student"]["weights"] == {**tiny["student"]["weights"], "mse": 1.0}
    assert config["teacher"] == tiny["teacher"] and "base" not in config
    check_config(config)


def test_a_base_that_is_missing_mistyped_or_circular_is_refused(tmp_path):
    with pytest.raises(BadInput, match="nowhere.yaml does not exist"):
        load_config(write(tmp_path / "a.yaml", {"base": "nowhere.yaml"}))
    with pytest.raises(BadInput, match="must be a path"):
        load_config(write(tmp_path / "b.yaml", {"base": ["tiny_cpu.yaml"]}))
    write(tmp_path / "c.yaml", {"base": "d.yaml"})
    with pytest.raises(BadInput, match="its own base"):
        load_config(write(tmp_path / "d.yaml", {"base": "c.yaml"}))
    with pytest.raises(BadInput, match="unknown key 'base'"):
        load_config(TINY, ["base=paper_x4.yaml"])


def test_the_x4_recipe_chains_ten_steps_as_the_weights_card_states():
    steps = recipe.recipe_steps(CONFIGS / "recipe_x4")
    assert len(steps) == 10 and steps[0].init is None
    for earlier, later in zip(steps, steps[1:]):
        assert later.init == earlier.product
    assert steps[-1].product == Path("runs/recipe_x4/10_mse_degraded70/student/student.safetensors")
    configs = [load_config(step.config) for step in steps]
    students = [typed_section(StudentSettings, config, "student") for config in configs]
    data = [typed_section(DataSettings, config, "data") for config in configs]
    assert [s.loop.steps for s in students] == [2600, 2400, 5500, 5000, 5000, 600, 4700, 4700, 4050, 4300]
    assert [s.loop.lr for s in students] == [2e-4] + [1e-4] * 4 + [3e-5] + [1e-4] * 4
    assert [d.seed for d in data] == [0, 1, 3, 5, 6, 8, 9, 10, 11, 14]
    assert [d.degraded_fraction for d in data] == [0.3] * 7 + [0.5, 0.6, 0.7]
    assert [(s.weights.l1, s.weights.mse) for s in students] == [(1.0, 0.0)] * 5 + [(0.0, 1.0)] * 5
    # Where a wall-clock budget cut the original run, the step stops at the same step: no budget in a replay.
    assert [s.loop.stop_at for s in students] == [None, None, 4857, 4583, 4560, None, 4360, 4514, None, None]
    assert [step.max_minutes for step in steps] == [None] * 10
    assert [step.keep for step in steps] == ["generator"] + ["ema"] * 4 + ["generator"] * 3 + ["ema"] * 2
    assert [run_settings(c).cpu_threads for c in configs] == [1, 1] + [2] * 8
    assert all(s.loop.batch_size == 8 and s.loop.lr_decay == "cosine" and d.crop == 128
               for s, d in zip(students, data)), "the rest comes from default_x4_cpu.yaml"


@pytest.mark.parametrize("scale", [2, 8])
def test_the_x2_and_x8_recipes_start_from_the_shipped_x4_file(scale):
    first, *later = recipe.recipe_steps(CONFIGS / f"recipe_x{scale}")
    assert first.init == Path("resources/weights/slimdiffsr_x4.safetensors")
    for step in (first, *later):
        assert step.keep == "ema" and step.max_minutes is None
        assert run_settings(load_config(step.config)).scale == scale


def test_a_recipe_whose_step_does_not_start_from_the_previous_product_is_refused(tmp_path):
    write(tmp_path / "01.yaml", {"base": str(TINY), "output_dir": str(tmp_path / "one")})
    write(tmp_path / "02.yaml", {"base": str(TINY), "output_dir": str(tmp_path / "two"),
                                 "student": {"init": str(tmp_path / "elsewhere.safetensors")}})
    with pytest.raises(BadInput, match="not from the product of"):
        recipe.recipe_steps(tmp_path)


def test_a_recipe_replays_its_steps_in_order_and_a_second_call_skips_the_done_ones(tmp_path):
    common = {"base": str(TINY), "max_minutes": 10}
    student = {"preset": "tiny", "teacher_weights": "none", "keep": "generator",
               "weights": {"perceptual": 0.0, "gan": 0.0}, "loop": {"steps": 1}}
    write(tmp_path / "01_first.yaml", {**common, "output_dir": str(tmp_path / "one"), "student": student})
    write(tmp_path / "02_second.yaml", {**common, "output_dir": str(tmp_path / "two"), "student": {
        **student, "init": str(tmp_path / "one" / "student" / "student.safetensors")}})
    assert recipe.main([str(tmp_path)]) == 0
    second = tmp_path / "two" / "student" / "student.safetensors"
    assert second.is_file()
    from backend.models import load

    assert "fine-tuning from" in load(second).meta["training_log"]
    stamp = second.stat().st_mtime_ns
    assert recipe.main([str(tmp_path)]) == 0
    assert second.stat().st_mtime_ns == stamp, "a done step is not run again"


def test_a_stages_saved_config_reruns_as_a_config(tmp_path):
    """The config.yaml a stage leaves holds what stood in each pretrained role; it must load again."""
    config = load_config(CONFIGS / "tiny_cpu.yaml", output_dir=str(tmp_path))
    saved = save_run_config(config, "student", {"perceptual": "fallback: Laplacian-pyramid L1"})
    reloaded = load_config(saved)
    check_config(reloaded)
    assert reloaded["pretrained"] == {"student": {"perceptual": "fallback: Laplacian-pyramid L1"}}
