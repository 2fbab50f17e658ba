"""Each training stage learns a fixed tiny batch, resumes exactly, and honours its budget and options."""

import math
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from slimdiffsr_qgis.contract import BadInput
from backend.models import StudentConfig, build, load, save
from training.stages import student as train_student
from training.stages import teacher as train_teacher
from training.stages import uncertainty as train_uncertainty
from training.runtime.entry import BUDGET_REACHED, run_stage
from training.runtime.config import load_config, loop_config
from training.runtime.loop import LoopConfig, lr_factor
from training.runtime.records import read_losses
from training_helpers import TINY_CONFIG, FixedPairs, tiny_config

torch.set_num_threads(1)

STAGES = {"uncertainty": train_uncertainty, "teacher": train_teacher, "student": train_student}
PAPER_X4 = TINY_CONFIG.with_name("paper_x4.yaml")
FAST_TEACHER = ("teacher.loop.lr=5.0e-3", "teacher.model.vae_lora_rank=8", "teacher.loop.grad_clip=0")


def run(config, stage, **kwargs):
    return run_stage(stage, STAGES[stage].build_task, config, FixedPairs(), **kwargs)


def losses(config, stage):
    return read_losses(Path(config["output_dir"]) / stage / "losses.csv")


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    """Stage 0 for 30 steps and stage 1 for 50, shared by the tests that need their products."""
    config = tiny_config(tmp_path_factory.mktemp("chain"), "uncertainty.loop.steps=30", "teacher.loop.steps=50",
                         *FAST_TEACHER)
    run(config, "uncertainty")
    run(config, "teacher")
    return config


def test_uncertainty_stage_overfits_a_fixed_batch(chain):
    rows = losses(chain, "uncertainty")
    assert rows[-1]["squared_error"] <= 0.5 * rows[0]["squared_error"]


def test_teacher_stage_overfits_a_fixed_batch_on_the_l1_term(chain):
    rows = losses(chain, "teacher")
    assert rows[-1]["step"] == 50
    last = sum(r["l1"] for r in rows[-5:]) / 5
    assert last <= 0.5 * rows[0]["l1"]


def test_student_stage_overfits_a_fixed_batch_on_the_l1_term(chain, tmp_path):
    config = tiny_config(tmp_path, "student.loop.steps=50", f"student.teacher_weights={chain['output_dir']}/teacher/teacher.safetensors")
    run(config, "student")
    rows = losses(config, "student")
    last = sum(r["l1"] for r in rows[-5:]) / 5
    assert last <= 0.5 * rows[0]["l1"]
    assert rows[-1]["feature"] > 0 and "mmd" in rows[-1]
    model = load(tmp_path / "student" / "student.safetensors")
    assert 0 < float(model.meta["teacher_init_fraction"]) < 1
    assert "of parameters initialised from the teacher's UNet" in model.meta["training_log"]
    saved = yaml.safe_load((tmp_path / "student" / "config.yaml").read_text(encoding="utf-8"))
    assert saved["student"]["loop"]["steps"] == 50 and saved["allow_fallbacks"] is True
    used = saved["pretrained"]["student"]
    assert used["perceptual"].startswith("fallback") and used["discriminator"].startswith("fallback")
    assert used["teacher"].endswith("teacher.safetensors")


@pytest.mark.parametrize("stage", ["uncertainty", "teacher", "student"])
def test_a_resumed_run_repeats_the_uninterrupted_loss_curve(chain, tmp_path, stage):
    inputs = (f"teacher.uncertainty_weights={chain['output_dir']}/uncertainty/uncertainty.safetensors",
              f"student.teacher_weights={chain['output_dir']}/teacher/teacher.safetensors",
              f"{stage}.loop.checkpoint_every=2", f"{stage}.loop.ema_decay=0.5")
    whole = tiny_config(tmp_path / "whole", f"{stage}.loop.steps=4", *inputs)
    run(whole, stage)
    parts = tiny_config(tmp_path / "parts", f"{stage}.loop.steps=2", *inputs)
    run(parts, stage)
    parts = tiny_config(tmp_path / "parts", f"{stage}.loop.steps=4", *inputs)
    run(parts, stage)
    expected, resumed = losses(whole, stage), losses(parts, stage)
    assert [r["step"] for r in resumed] == [1, 2, 3, 4]
    for a, b in zip(expected, resumed):
        for key in a:
            if key != "minutes":
                assert a[key] == pytest.approx(b[key], rel=1e-5, abs=1e-7), (a["step"], key)


def test_the_paper_config_refuses_fallbacks_unless_asked(tmp_path, capsys):
    arguments = ["--config", str(PAPER_X4), "--out", str(tmp_path), "--set", "student.preset=tiny"]
    assert train_student.main(arguments) == 2
    assert "--allow-fallbacks" in capsys.readouterr().err
    # Allowed, the stage gets past the fallback check and stops at the next missing input, the teacher.
    assert train_student.main([*arguments, "--allow-fallbacks"]) == 2
    assert "run python -m training.stages.teacher first" in capsys.readouterr().err


def test_adamw_decays_weights_unless_told_otherwise():
    assert LoopConfig(steps=1, batch_size=1, lr=1.0).weight_decay == 1e-2
    assert LoopConfig(steps=1, batch_size=1, lr=1.0, optimizer="adam").weight_decay == 0.0
    assert LoopConfig(steps=1, batch_size=1, lr=1.0, weight_decay="0").weight_decay == 0.0
    for name in ("paper_x4", "paper_x8"):
        config = load_config(PAPER_X4.with_name(f"{name}.yaml"))
        for stage in ("uncertainty", "teacher"):
            assert loop_config(config, stage).optimizer == "adamw"
            assert config[stage]["loop"]["weight_decay"] == 1e-2, "stated in the file"


def test_a_wall_clock_budget_stops_with_a_checkpoint_and_the_next_call_continues(tmp_path):
    config = tiny_config(tmp_path, "uncertainty.loop.steps=3")
    first = run(config, "uncertainty", max_minutes=0)
    assert (first.step, first.finished) == (1, False)
    assert (tmp_path / "uncertainty" / "checkpoints" / "step_1" / "state.pt").is_file()
    assert first.product.is_file(), "a budgeted piece of a run still writes usable weights"
    second = run(config, "uncertainty")
    assert (second.step, second.finished) == (3, True)
    assert second.product.is_file()


def test_stop_at_finishes_early_on_a_schedule_planned_over_all_steps(tmp_path):
    """A recipe replays a budget-cut run by its step, not its minutes: the run finishes at `stop_at`
    while its learning rate follows the cosine planned over `steps`."""
    config = tiny_config(tmp_path, "uncertainty.loop.steps=4", "uncertainty.loop.stop_at=2",
                         "uncertainty.loop.lr_decay=cosine")
    outcome = run(config, "uncertainty")
    assert (outcome.step, outcome.finished) == (2, True) and outcome.product.is_file()
    assert [row["step"] for row in read_losses(tmp_path / "uncertainty" / "losses.csv")][-1] == 2
    loop = loop_config(config, "uncertainty")
    assert loop.last_step == 2
    assert lr_factor(loop, 1) == pytest.approx(0.5 * (1 + math.cos(math.pi / 4))), "the cosine spans all 4 steps"
    with pytest.raises(BadInput, match="stop_at"):
        LoopConfig(steps=4, batch_size=1, lr=1.0, stop_at=5)


def test_the_configs_budget_applies_when_the_command_line_gives_none(tmp_path):
    arguments = ["--config", str(TINY_CONFIG), "--out", str(tmp_path), "--set", "student.teacher_weights=none",
                 "--set", "student.weights={l1: 1.0, perceptual: 0.0, gan: 0.0}", "--set", "student.loop.steps=3",
                 "--set", "max_minutes=0"]
    assert train_student.main(arguments) == BUDGET_REACHED
    assert [p.name for p in (tmp_path / "student" / "checkpoints").iterdir()] == ["step_1"]
    assert train_student.main([*arguments, "--max-minutes", "60"]) == 0, "the command line's budget wins"
    assert read_losses(tmp_path / "student" / "losses.csv")[-1]["step"] == 3


def test_the_product_holds_the_raw_weights_when_the_config_keeps_them(tmp_path):
    config = tiny_config(tmp_path, "student.loop.steps=2", "student.teacher_weights=none", "student.keep=generator",
                         "student.loop.ema_decay=0.5")
    model = load(run(config, "student").product)
    checkpoint = tmp_path / "student" / "checkpoints" / "step_2"
    raw, ema = (load_file(str(checkpoint / f"{take}.safetensors")) for take in ("generator", "ema"))
    state = {f"student.{name}": tensor for name, tensor in model.state_dict().items()}
    assert all(torch.equal(state[name], tensor) for name, tensor in raw.items() if name in state)
    assert any(not torch.equal(state[name], tensor) for name, tensor in ema.items() if name in state)
    assert model.meta["weights_taken"] == "generator of the last step"


def test_no_dis_student_trains_without_a_teacher_and_says_so(tmp_path):
    config = tiny_config(tmp_path, "student.loop.steps=2", "student.teacher_weights=none")
    outcome = run(config, "student")
    model = load(outcome.product)
    assert model.meta["teacher"] == "none (No-Dis)"
    assert "No-Dis" in model.meta["training_log"]
    assert "reconstruction loss: 1·l1 + 2.5·perceptual + 0.25·gan" in model.meta["training_log"]
    assert model.meta["normalisation"] == "percentile:2,98"


def test_student_fine_tunes_from_a_weights_file_with_accumulation_bf16_and_ema(tmp_path):
    first = run(tiny_config(tmp_path / "a", "student.loop.steps=1", "student.teacher_weights=none"), "student")
    config = tiny_config(tmp_path / "b", "student.loop.steps=2", "student.teacher_weights=none",
                         f"student.init={first.product}", "student.loop.grad_accum=2",
                         "student.loop.mixed_precision=bf16", "student.loop.ema_decay=0.5")
    outcome = run(config, "student")
    model = load(outcome.product)
    from backend.models.weights import file_sha256

    lineage = f"fine-tuning from {first.product} (sha256 {file_sha256(str(first.product))[:16]}, steps 1, minutes "
    assert lineage in model.meta["training_log"], "the init must stay identifiable after its path is overwritten"
    ema = load_file(str(tmp_path / "b" / "student" / "checkpoints" / "step_2" / "ema.safetensors"))
    exported = model.state_dict()
    for name, tensor in ema.items():
        assert torch.equal(exported[name[len("student."):]], tensor)


def test_a_file_names_the_families_it_never_saw_and_a_fine_tune_cannot_unsee_one(tmp_path):
    def student(folder, *overrides):
        config = tiny_config(tmp_path / folder, "student.loop.steps=1", "student.teacher_weights=none", *overrides)
        return run(config, "student").product

    without_neon = student("a", "data.exclude_sensors=[neon]")
    assert load(without_neon).meta["excluded_sensors"] == "neon"
    narrower = student("b", "data.exclude_sensors=[neon,landsat8]", f"student.init={without_neon}")
    assert load(narrower).meta["excluded_sensors"] == "neon", "its init trained on landsat8"
    saw_all = student("c")
    assert "excluded_sensors" not in load(saw_all).meta
    assert "excluded_sensors" not in load(student("d", "data.exclude_sensors=[neon]", f"student.init={saw_all}")).meta


def test_fine_tuning_may_switch_on_the_lr_skip_but_not_change_shapes(tmp_path):
    first = run(tiny_config(tmp_path / "a", "student.loop.steps=1", "student.teacher_weights=none",
                            "student.encoder=lr"), "student")
    config = tiny_config(tmp_path / "b", "student.loop.steps=1", "student.teacher_weights=none",
                         f"student.init={first.product}", "student.encoder=lr", "student.config.lr_skip=true")
    model = load(run(config, "student").product)
    assert model.config.lr_skip and model.config.encoder == "lr"
    assert "'lr_skip': True" in model.meta["training_log"]
    wider = tiny_config(tmp_path / "c", "student.loop.steps=1", "student.teacher_weights=none",
                        f"student.init={first.product}", "student.encoder=lr", "student.config.vae_channels=8")
    with pytest.raises(BadInput, match="vae_channels"):
        run(wider, "student")


def test_x8_weights_fine_tune_from_an_x4_file_whose_parameters_they_share(tmp_path):
    torch.manual_seed(0)
    x4 = build(StudentConfig.tiny(4).replace(encoder="lr"))
    save(x4, tmp_path / "x4.safetensors", {})
    config = tiny_config(tmp_path / "b", "scale=8", "student.teacher_weights=none",
                         f"student.init={tmp_path / 'x4.safetensors'}", "student.encoder=lr")
    task = train_student.StudentTask(config)
    x8 = task.generator.student
    assert x8.config == x4.config.replace(scale=8)
    assert all(torch.equal(x8.state_dict()[name], tensor) for name, tensor in x4.state_dict().items())
    assert any("trained for x4, now x8" in note for note in task.notes)
    assert x8(torch.rand(1, 3, 8, 8)).shape == (1, 3, 64, 64)


def test_cosine_decay_reaches_zero_at_the_last_step_and_a_resumed_run_follows_it(tmp_path):
    settings = ("student.teacher_weights=none", "student.loop.lr_decay=cosine", "student.loop.checkpoint_every=2")
    assert [lr_factor(LoopConfig(steps=4, batch_size=1, lr=1.0, lr_decay="cosine"), s) for s in (0, 2, 4)] == \
        pytest.approx([1.0, 0.5, 0.0])
    whole = tiny_config(tmp_path / "whole", "student.loop.steps=4", *settings)
    run(whole, "student")
    parts = tiny_config(tmp_path / "parts", "student.loop.steps=4", *settings)
    run(parts, "student", max_minutes=0)
    run(parts, "student")
    for a, b in zip(losses(whole, "student"), losses(parts, "student")):
        assert a["total"] == pytest.approx(b["total"], rel=1e-5, abs=1e-7), a["step"]


def test_ema_warms_up_so_a_short_run_does_not_keep_its_initial_weights():
    from torch import nn

    from training.runtime.ema import EMA

    module = nn.Linear(1, 1, bias=False)
    nn.init.zeros_(module.weight)
    ema = EMA(module, decay=0.999)
    with torch.no_grad():
        module.weight.fill_(1.0)
    for step in range(2600):
        ema.update(module, step)
    assert ema.decay_at(0) == pytest.approx(0.1) and ema.decay_at(10 ** 6) == 0.999
    assert ema.state_dict()["weight"].item() > 0.999, "a plain 0.999 EMA would still be at 0.93"


def test_any_checkpoint_exports_as_a_weights_file_with_its_ema_or_raw_weights(tmp_path):
    from training.runtime.export import export

    config = tiny_config(tmp_path, "student.loop.steps=2", "student.teacher_weights=none",
                         "student.loop.checkpoint_every=1", "student.loop.ema_decay=0.9")
    run(config, "student")
    stage = tmp_path / "student"
    raw = load(export(stage, 1, "generator", tmp_path / "raw.safetensors"))
    unrelated = tmp_path / "unrelated.safetensors"
    save(load(stage / "student.safetensors"), unrelated, {"training_log": "another run"})
    ema = load(export(stage, 1, "ema", tmp_path / "ema.safetensors", like=unrelated))
    assert ema.meta["training_log"] == raw.meta["training_log"] != "another run", "a finished run's own log wins"
    checkpoint = load_file(str(stage / "checkpoints" / "step_1" / "generator.safetensors"))
    for name, tensor in raw.state_dict().items():
        if f"student.{name}" in checkpoint:
            assert torch.equal(tensor, checkpoint[f"student.{name}"])
    assert raw.meta["weights_taken"] == f"generator of checkpoint step_1 of {stage}" and raw.meta["steps"] == "1"
    assert any(not torch.equal(a, b) for a, b in zip(raw.state_dict().values(), ema.state_dict().values()))
    with pytest.raises(BadInput, match="step_7"):
        export(stage, 7, "ema", tmp_path / "x.safetensors")


def test_a_run_still_going_exports_with_the_config_of_a_file_like_it(tmp_path):
    from training.runtime.export import export

    config = tiny_config(tmp_path, "student.loop.steps=2", "student.teacher_weights=none",
                         "student.loop.checkpoint_every=1")
    run(config, "student")
    stage = tmp_path / "student"
    like = tmp_path / "like.safetensors"
    (stage / "student.safetensors").rename(like)  # as if the run had not finished
    with pytest.raises(BadInput, match="--like"):
        export(stage, 1, "generator", tmp_path / "raw.safetensors")
    raw = load(export(stage, 1, "generator", tmp_path / "raw.safetensors", like=like))
    assert raw.meta["training_log"].startswith("exported while the run was still going"), \
        "the like file's lineage is not the run's"
    checkpoint = load_file(str(stage / "checkpoints" / "step_1" / "generator.safetensors"))
    assert all(torch.equal(t, checkpoint[f"student.{n}"]) for n, t in raw.state_dict().items()
               if f"student.{n}" in checkpoint)
    other = tmp_path / "other.safetensors"
    save(build(StudentConfig.compact(4)), other)
    with pytest.raises(BadInput, match="does not fit"):
        export(stage, 1, "generator", tmp_path / "x.safetensors", like=other)
