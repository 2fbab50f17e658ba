"""The whole student: sizes for any input, feature taps, parameter counts, and the fast paths."""

from __future__ import annotations

import pytest
import torch

from backend.models import StudentConfig, build, feature_channels

torch.set_num_threads(1)


def parameter_count(config: StudentConfig) -> int:
    with torch.device("meta"):
        model = build(config)
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize(
    "config,expected",
    [
        (StudentConfig.paper(4), 55_426_051),
        (StudentConfig.paper(8), 55_426_051),
        (StudentConfig.paper(4).replace(encoder="lr"), 55_426_051),
        (StudentConfig.tiny(4), 566_147),
        (StudentConfig.tiny(8), 566_147),
        (StudentConfig.tiny(4).replace(encoder="lr"), 566_147),
    ],
    ids=["paper-x4", "paper-x8", "paper-x4-lr", "tiny-x4", "tiny-x8", "tiny-x4-lr"],
)
def test_parameter_count_is_pinned(config, expected):
    assert parameter_count(config) == expected


def test_paper_preset_is_within_five_percent_of_the_papers_58_05_million():
    assert abs(parameter_count(StudentConfig.paper(4)) / 58.05e6 - 1) < 0.05


@pytest.mark.parametrize("encoder", ["hr", "lr"])
@pytest.mark.parametrize("scale", [4, 8])
@pytest.mark.parametrize("size", [(1, 1), (5, 3), (13, 17)])
def test_output_is_scale_times_input_for_any_size(encoder, scale, size):
    model = build(StudentConfig.tiny(scale).replace(encoder=encoder)).eval()
    with torch.no_grad():
        out = model(torch.rand(2, 3, *size))
    assert out.shape == (2, 3, size[0] * scale, size[1] * scale)
    assert torch.isfinite(out).all()


def test_model_carries_scale_and_config():
    config = StudentConfig.tiny(8)
    model = build(config)
    assert model.scale == 8 and model.config == config


def test_feature_taps_match_the_advertised_names_and_channels():
    config = StudentConfig.tiny(4)
    model = build(config).eval()
    lr = torch.rand(1, 3, 12, 8)
    with torch.no_grad():
        out, taps = model.forward_features(lr)
        plain = model(lr)
    torch.testing.assert_close(out, plain)
    assert {name: t.shape[1] for name, t in taps.items()} == feature_channels(config)
    assert list(feature_channels(config)) == ["down0", "down1", "mid", "up1", "up0"]


def test_paper_feature_channels_follow_sd_widths():
    assert feature_channels(StudentConfig.paper(4)) == {
        "down0": 320, "down1": 640, "mid": 1280, "up1": 640, "up0": 320,
    }


def test_training_step_reaches_every_parameter():
    model = build(StudentConfig.tiny(4)).train()
    model(torch.rand(1, 3, 8, 8)).mean().backward()
    missing = [name for name, p in model.named_parameters() if p.grad is None]
    assert not missing


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("encoder", ["hr", "lr"])
def test_half_precision_autocast_and_channels_last_give_the_float32_result_closely(encoder, dtype):
    model = build(StudentConfig.tiny(4).replace(encoder=encoder)).eval()
    lr = torch.rand(1, 3, 16, 16)
    with torch.no_grad():
        reference = model(lr)
        fast_model = model.to(memory_format=torch.channels_last)
        with torch.autocast("cpu", dtype=dtype):
            fast = fast_model(lr.to(memory_format=torch.channels_last))
    assert fast.shape == reference.shape
    assert (fast.float() - reference).abs().mean() < 0.05 * reference.abs().mean() + 1e-3


def test_lr_layout_reads_the_lr_without_upsampling_it():
    config = StudentConfig.tiny(4).replace(encoder="lr")
    model = build(config).eval()
    seen = []
    model.encoder.register_forward_hook(lambda module, args, out: seen.append(args[0].shape))
    with torch.no_grad():
        model(torch.rand(1, 3, 8, 12))
    assert seen == [(1, 3, 8, 12)]


def test_invalid_config_values_are_refused_with_the_field_named():
    with pytest.raises(ValueError, match="scale"):
        StudentConfig.tiny(3)
    with pytest.raises(ValueError, match="attention"):
        StudentConfig.tiny(4).replace(attention="full")


def test_config_round_trips_through_a_dict():
    config = StudentConfig.paper(8).replace(encoder="lr", conv2="conv3x3")
    assert StudentConfig.from_dict(config.to_dict()) == config


def test_residual_student_starts_as_exact_bicubic_and_learns_only_the_difference():
    import torch.nn.functional as F

    config = StudentConfig.tiny(4).replace(residual=True, encoder="lr")
    model = build(config).eval()
    lr = torch.rand(1, 3, 20, 28)
    with torch.no_grad():
        hr = model(lr)
    assert torch.equal(hr, F.interpolate(lr, scale_factor=4, mode="bicubic", align_corners=False))
    hr = model(lr)
    hr.mean().backward()
    assert model.decoder.layers[-1].weight.grad.abs().sum() > 0, "the zero-initialised last conv still learns"


def test_compact_preset_is_small_enough_to_ship():
    model = build(StudentConfig.compact(4))
    parameters = sum(p.numel() for p in model.parameters())
    assert parameters * 4 < 20 * 2**20, "fp32 weights must stay under the 20 MB shipping limit"
    assert model.config.residual and model.config.lr_skip and model.config.encoder == "lr"


@pytest.mark.parametrize("scale", [2, 4, 8])
def test_lr_skip_hands_the_decoder_the_lr_grid_features_without_new_parameters(scale):
    plain = build(StudentConfig.tiny(scale).replace(encoder="lr")).eval()
    skip = build(plain.config.replace(lr_skip=True)).eval()
    skip.load_state_dict(plain.state_dict())  # same names and shapes: weights move between the two
    for model in (plain, skip):  # silence the UNet: only a skip can still carry the input to the output
        torch.nn.init.zeros_(model.unet.conv_out.weight)
        torch.nn.init.zeros_(model.unet.conv_out.bias)
    lr = torch.rand(2, 3, 8, 8)
    with torch.no_grad():
        plain_out, skip_out = plain(lr), skip(lr)
    assert skip_out.shape == plain_out.shape == (2, 3, 8 * scale, 8 * scale)
    assert torch.allclose(plain_out[0], plain_out[1]), "without the skip a silent UNet hides the input"
    assert not torch.allclose(skip_out[0], skip_out[1]), "with the skip the input reaches the decoder"


def test_lr_skip_needs_the_lr_encoder():
    with pytest.raises(ValueError, match="lr_skip"):
        StudentConfig.tiny(4).replace(lr_skip=True)
