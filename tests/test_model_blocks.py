"""Each building block of the student: output shape, gradient flow, and one defining property."""

from __future__ import annotations

import pytest
import torch

from backend.models import StudentConfig
from backend.models.operators import (
    DirectionSeparableConv,
    FrequencySeparableConv,
    QueryGlobalAggregation,
    SelfAttention,
)
from backend.models.unet import AttentionBlock, Downsample, PrunedUNet, ResBlock, Upsample
from backend.models import vae
from backend.models.vae import NearestUpsampleConv, TinyBlock, TinyDecoder, TinyEncoder

torch.set_num_threads(1)
TINY = StudentConfig.tiny(4)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def assert_all_parameters_get_gradients(module: torch.nn.Module, output: torch.Tensor) -> None:
    output.square().mean().backward()
    missing = [name for name, p in module.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing, f"no gradient reaches {missing}"


# --- TAESD-style blocks -----------------------------------------------------------------


def test_tiny_block_keeps_shape_and_passes_gradients():
    block = TinyBlock(8)
    x = torch.randn(2, 8, 10, 12)
    out = block(x)
    assert out.shape == x.shape
    assert_all_parameters_get_gradients(block, out)


def test_tiny_block_with_silent_convs_is_relu_of_its_input():
    block = TinyBlock(8)
    torch.nn.init.zeros_(block.conv[4].weight)
    torch.nn.init.zeros_(block.conv[4].bias)
    x = torch.randn(1, 8, 6, 6)
    torch.testing.assert_close(block(x), torch.relu(x))


def test_encoder_reaches_latent_grid_from_hr_and_from_lr():
    hr_encoder = TinyEncoder(8, strides=(2, 2, 2))
    lr_encoder = TinyEncoder(8, strides=(1, 1, 2))
    assert hr_encoder(torch.rand(1, 3, 64, 48)).shape == (1, 8, 8, 6)
    assert lr_encoder(torch.rand(1, 3, 16, 12)).shape == (1, 8, 8, 6)


def test_encoder_passes_gradients():
    encoder = TinyEncoder(8)
    assert_all_parameters_get_gradients(encoder, encoder(torch.rand(1, 3, 32, 32)))


def test_encoder_layouts_share_parameter_names_and_shapes_so_taesd_weights_fit_both():
    hr_shapes = {k: v.shape for k, v in TinyEncoder(8, (2, 2, 2)).state_dict().items()}
    lr_shapes = {k: v.shape for k, v in TinyEncoder(8, (1, 1, 2)).state_dict().items()}
    assert hr_shapes == lr_shapes
    assert "layers.13.conv.4.weight" in hr_shapes and not any(k.startswith("layers.14") for k in hr_shapes)


def test_decoder_upsamples_eight_times_and_passes_gradients():
    decoder = TinyDecoder(8)
    out = decoder(torch.randn(1, 8, 4, 5))
    assert out.shape == (1, 3, 32, 40)
    assert_all_parameters_get_gradients(decoder, out)


def test_decoder_tail_in_stripes_equals_one_pass(monkeypatch):
    """Inference decodes the output-size tail in stripes with a halo; every output row must see what it
    sees in one pass, including the rows at stripe joins and at the map's own edges."""
    torch.manual_seed(0)
    decoder = TinyDecoder(8).eval()
    features = torch.randn(2, 8, 11, 9)
    with torch.no_grad():
        whole = decoder(features)
        # 8 channels x 2 x 4 x 2*18 per input row of the tail: a budget of 1,600 elements gives stripes of
        # a few rows, so the 44-row tail input is cut into many stripes of unequal reach.
        monkeypatch.setattr(vae, "TAIL_STRIPE_ELEMENTS", 1600)
        striped = decoder(features)
        monkeypatch.setattr(vae, "TAIL_HALO_ROWS", 1)  # a halo too short for the tail's reach
        too_short = decoder(features)
    assert striped.shape == whole.shape == (2, 3, 88, 72)
    assert torch.allclose(striped, whole, atol=1e-5)
    assert not torch.allclose(too_short, whole, atol=1e-3), "the halo test must be able to fail"


def test_decoder_tail_stripes_only_without_gradients(monkeypatch):
    decoder = TinyDecoder(8)
    monkeypatch.setattr(vae, "TAIL_STRIPE_ELEMENTS", 1600)
    calls = []
    monkeypatch.setattr(vae, "decode_tail", lambda tail, x: calls.append(x.shape) or tail(x))
    assert_all_parameters_get_gradients(decoder, decoder(torch.randn(1, 8, 4, 5)))
    assert calls == []
    with torch.no_grad():
        decoder(torch.randn(1, 8, 4, 5))
    assert calls == [(1, 8, 16, 20)]


def test_fresh_encoder_and_decoder_keep_their_features_near_unit_scale():
    """Trained from scratch, features far below Adam's step size let the HR block's ReLUs die."""
    torch.manual_seed(0)
    features = TinyEncoder(32)(torch.rand(2, 3, 64, 64))
    assert 0.2 < features.std() < 5
    before_last_conv = TinyDecoder(32).layers[:-1](torch.relu(torch.randn(2, 32, 8, 8)))
    assert before_last_conv.shape[-1] == 64
    assert 0.2 < before_last_conv.std() < 5


def test_decoder_output_is_not_clamped_so_the_loss_sees_gradients_beyond_the_range():
    decoder = TinyDecoder(8)
    torch.nn.init.constant_(decoder.layers[-1].bias, 3.0)
    torch.nn.init.zeros_(decoder.layers[-1].weight)
    assert decoder(torch.randn(1, 8, 2, 2)).min() == 3.0


# --- fused convs --------------------------------------------------------------------------


def test_fused_convs_map_vae_width_to_unet_width_and_back():
    unet = PrunedUNet(TINY)
    x = torch.randn(1, TINY.vae_channels, 8, 8)
    assert unet.conv_in(x).shape == (1, TINY.block_channels[0], 8, 8)
    out = unet(x)
    assert out.shape == x.shape
    assert_all_parameters_get_gradients(unet, out)


def test_fused_input_conv_has_no_four_channel_bottleneck():
    unet = PrunedUNet(TINY)
    samples = unet.conv_in(torch.randn(64, TINY.vae_channels, 3, 3))[:, :, 1, 1]
    assert torch.linalg.matrix_rank(samples) > 4


# --- FSC ----------------------------------------------------------------------------------


def test_fsc_changes_channels_keeps_size_and_passes_gradients():
    fsc = FrequencySeparableConv(8, 12)
    out = fsc(torch.randn(2, 8, 9, 7))
    assert out.shape == (2, 12, 9, 7)
    assert_all_parameters_get_gradients(fsc, out)


def test_fsc_low_and_high_parts_add_up_to_its_input():
    x = torch.randn(2, 8, 9, 7, dtype=torch.float64)
    low, high = FrequencySeparableConv.split(x)
    torch.testing.assert_close(low + high, x, rtol=0, atol=1e-12)
    assert high.abs().mean() < x.abs().mean()  # the blur really removed something and kept something
    assert low.abs().mean() > 0


# --- DSC ----------------------------------------------------------------------------------


def test_dsc_changes_channels_keeps_size_and_passes_gradients():
    dsc = DirectionSeparableConv(8, 4)
    out = dsc(torch.randn(2, 8, 9, 7))
    assert out.shape == (2, 4, 9, 7)
    assert_all_parameters_get_gradients(dsc, out)


def _changed_rows_and_columns(before: torch.Tensor, after: torch.Tensor) -> tuple[set[int], set[int]]:
    changed = (after - before).abs().sum(dim=(0, 1)) > 0
    rows, cols = torch.nonzero(changed, as_tuple=True)
    return set(rows.tolist()), set(cols.tolist())


def test_dsc_horizontal_path_never_mixes_rows_and_vertical_path_never_mixes_columns():
    dsc = DirectionSeparableConv(4, 4)
    x = torch.randn(1, 4, 9, 9)
    row_bumped = x.clone()
    row_bumped[:, :, 4, :] += 1.0
    col_bumped = x.clone()
    col_bumped[:, :, :, 4] += 1.0
    with torch.no_grad():
        horizontal, vertical, _ = dsc.paths(x)
        assert _changed_rows_and_columns(horizontal, dsc.paths(row_bumped)[0])[0] == {4}
        assert _changed_rows_and_columns(vertical, dsc.paths(col_bumped)[1])[1] == {4}


def test_dsc_as_a_whole_reaches_both_directions_and_the_diagonals():
    dsc = DirectionSeparableConv(4, 4)
    x = torch.zeros(1, 4, 7, 7)
    impulse = x.clone()
    impulse[:, :, 3, 3] = 1.0
    with torch.no_grad():
        response = (dsc(impulse) - dsc(x)).abs().sum(dim=(0, 1)) > 0
    for row, col in [(3, 2), (3, 4), (2, 3), (4, 3), (2, 2), (4, 4), (2, 4), (4, 2)]:
        assert response[row, col], f"no response at {(row, col)}"
    assert not response[1, 3] and not response[3, 5]  # reach is the kernel, no more


# --- QGAM and its ablation --------------------------------------------------------------


def test_qgam_keeps_token_shape_and_passes_gradients():
    qgam = QueryGlobalAggregation(16, queries=4, dim=8)
    out = qgam(torch.randn(2, 30, 16))
    assert out.shape == (2, 30, 16)
    assert_all_parameters_get_gradients(qgam, out)


def test_qgam_attention_maps_are_tokens_times_queries_so_cost_is_linear_in_tokens():
    qgam = QueryGlobalAggregation(16, queries=4, dim=8)
    sizes = {}
    for tokens in (64, 128, 256):
        _, gather, spread = qgam.attention_maps(torch.randn(2, tokens, 16))
        assert gather.shape == (2, 4, tokens) and spread.shape == (2, tokens, 4)
        sizes[tokens] = gather.numel() + spread.numel()
    assert sizes[256] == 2 * sizes[128] == 4 * sizes[64]


def test_self_attention_ablation_keeps_token_shape_and_passes_gradients():
    attention = SelfAttention(16, head_dim=8)
    out = attention(torch.randn(2, 10, 16))
    assert out.shape == (2, 10, 16)
    assert_all_parameters_get_gradients(attention, out)


def test_attention_block_with_silent_output_projection_is_identity():
    block = AttentionBlock(16, TINY)
    out = block(torch.randn(1, 16, 5, 6))
    assert out.shape == (1, 16, 5, 6)
    assert_all_parameters_get_gradients(block, out)
    torch.nn.init.zeros_(block.proj_out.weight)
    torch.nn.init.zeros_(block.proj_out.bias)
    x = torch.randn(1, 16, 5, 6)
    torch.testing.assert_close(block(x), x)


# --- ResBlock and resamplers -------------------------------------------------------------


@pytest.mark.parametrize("conv1,conv2", [("fsc", "dsc"), ("conv3x3", "conv3x3")])
def test_resblock_changes_channels_and_passes_gradients(conv1, conv2):
    block = ResBlock(16, 32, TINY.replace(conv1=conv1, conv2=conv2))
    out = block(torch.randn(2, 16, 6, 5))
    assert out.shape == (2, 32, 6, 5)
    assert_all_parameters_get_gradients(block, out)


def test_resblock_with_silent_second_conv_is_its_shortcut():
    block = ResBlock(16, 16, TINY)
    torch.nn.init.zeros_(block.conv2.mix[2].weight)
    torch.nn.init.zeros_(block.conv2.mix[2].bias)
    x = torch.randn(1, 16, 6, 5)
    torch.testing.assert_close(block(x), x)


def test_downsample_halves_and_upsample_doubles_the_grid():
    assert Downsample(8)(torch.randn(1, 8, 10, 6)).shape == (1, 8, 5, 3)
    assert Upsample(8)(torch.randn(1, 8, 5, 3)).shape == (1, 8, 10, 6)


def test_upsampling_conv_doubles_the_grid_and_passes_gradients():
    conv = NearestUpsampleConv(6, 4)
    out = conv(torch.randn(2, 6, 5, 3))
    assert out.shape == (2, 4, 10, 6)
    assert_all_parameters_get_gradients(conv, out)


@pytest.mark.parametrize("channels_last", [False, True])
def test_upsampling_conv_equals_nearest_upsampling_then_the_3x3_conv(channels_last):
    conv = NearestUpsampleConv(6, 4).double()
    x = torch.randn(2, 6, 5, 7, dtype=torch.float64)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    upsampled = torch.nn.functional.interpolate(x, scale_factor=2, mode="nearest")
    expected = torch.nn.functional.conv2d(upsampled, conv.weight, conv.bias, padding=1)
    torch.testing.assert_close(conv(x), expected, rtol=0, atol=1e-12)
