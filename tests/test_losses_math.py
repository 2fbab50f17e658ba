"""The training losses and the timestep inversion compute what the paper's equations say."""

import math

import pytest
import torch
from safetensors.torch import save_file

from slimdiffsr_qgis.contract import BadInput
from training.networks.backbone import scheduler_from
from training.losses.statistics import MULTI_BANDWIDTHS, mmd2_rbf, total_variation
from training.losses.perceptual import LPIPS, LaplacianPyramidL1, build_perceptual
from training.losses.reconstruction import Reconstruction
from training.networks.timesteps import invert_alphas_cumprod
from training.networks.uncertainty_estimator import uncertainty_nll

torch.set_num_threads(1)


def test_nll_equals_hand_computation():
    z_gt = torch.tensor([1.0, -2.0, 0.5, 3.0])
    z_mean = torch.tensor([0.0, -1.0, 0.5, 1.0])
    s = torch.tensor([0.0, 1.0, -1.0, 2.0])
    # 1/(2N) Σ (exp(-s)|z_gt - z_mean|² + 3s), N = 4, term by term:
    # 1·1 + 0 | e⁻¹·1 + 3 | e·0 − 3 | e⁻²·4 + 6   ->   sum 7 + e⁻¹ + 4e⁻²
    by_hand = (7 + math.exp(-1) + 4 * math.exp(-2)) / 8
    assert uncertainty_nll(z_gt, z_mean, s).item() == pytest.approx(by_hand, rel=1e-6)


def test_nll_minimiser_in_s_is_log_of_a_third_of_the_squared_error():
    z_gt = torch.tensor([2.0, -1.0, 0.3])
    z_mean = torch.tensor([0.5, 1.0, 0.0])
    s = torch.zeros(3, requires_grad=True)
    optimiser = torch.optim.LBFGS([s], lr=1, max_iter=200, line_search_fn="strong_wolfe")

    def closure():
        optimiser.zero_grad()
        loss = uncertainty_nll(z_gt, z_mean, s)
        loss.backward()
        return loss

    optimiser.step(closure)
    expected = torch.log((z_gt - z_mean) ** 2 / 3)
    assert torch.allclose(s.detach(), expected, atol=1e-4)


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_timestep_inversion_is_exact_at_the_schedules_timesteps(prediction_type):
    table = scheduler_from(prediction_type).alphas_cumprod.float()
    steps = torch.tensor([0, 1, 17, 250, 500, 998, 999])
    assert torch.equal(invert_alphas_cumprod(table[steps], table), steps.float())


def test_timestep_inversion_is_monotone_and_interpolates_between_steps():
    table = scheduler_from("epsilon").alphas_cumprod.float()
    levels = torch.linspace(float(table[0]), float(table[-1]), 5000)
    t = invert_alphas_cumprod(levels, table)
    assert torch.all(t[1:] >= t[:-1])
    midway = (table[10] + table[11]) / 2
    assert invert_alphas_cumprod(midway.view(1), table).item() == pytest.approx(10.5, abs=1e-3)


def test_timestep_inversion_on_a_hand_made_table():
    table = torch.tensor([0.9, 0.7, 0.4, 0.1])
    alpha_bar = torch.tensor([0.8, 0.55, 0.34, 0.4, 0.1, 0.95, 0.05], requires_grad=True)
    # 0.8 is halfway from 0.9 (t=0) to 0.7 (t=1); 0.55 halfway from 0.7 to 0.4; 0.34 is a fifth of the
    # way from 0.4 (t=2) to 0.1 (t=3); table entries give their index; outside the table clamps to its ends.
    t = invert_alphas_cumprod(alpha_bar, table)
    assert t.tolist() == pytest.approx([0.5, 1.5, 2.2, 2.0, 3.0, 0.0, 3.0], abs=1e-6)
    t[1].backward()
    assert alpha_bar.grad[1].item() == pytest.approx(-1 / (0.7 - 0.4), rel=1e-5)


def test_timestep_inversion_has_a_gradient_with_respect_to_the_noise_level():
    table = scheduler_from("epsilon").alphas_cumprod.float()
    alpha_bar = torch.tensor([0.9, 0.5, 0.1], requires_grad=True)
    invert_alphas_cumprod(alpha_bar, table).sum().backward()
    assert torch.all(alpha_bar.grad < 0)


def test_mmd_equals_hand_computation_with_one_median_bandwidth():
    x = torch.tensor([[0.0], [1.0]])
    y = torch.tensor([[3.0]])
    # Pooled pairwise distances 1, 3, 2: the median is σ = 2, so k(d) = exp(-d² / 8).
    k = lambda d: math.exp(-d * d / 8)  # noqa: E731
    k_xx = (k(0) + k(1) + k(1) + k(0)) / 4
    k_yy = k(0)
    k_xy = (k(3) + k(2)) / 2
    assert mmd2_rbf(x, y).item() == pytest.approx(k_xx + k_yy - 2 * k_xy, rel=1e-6)
    fixed = lambda d: math.exp(-d * d / 2)  # noqa: E731  σ = 1 given
    by_hand = (2 + 2 * fixed(1)) / 4 + 1 - (fixed(3) + fixed(2))
    assert mmd2_rbf(x, y, sigma=1.0).item() == pytest.approx(by_hand, rel=1e-6)


def test_the_multi_bandwidth_option_averages_kernels_at_multiples_of_the_median():
    x = torch.tensor([[0.0], [1.0]])
    y = torch.tensor([[3.0]])
    assert mmd2_rbf(x, y, bandwidths=MULTI_BANDWIDTHS).item() == pytest.approx(
        sum(mmd2_rbf(x, y, sigma=2.0 * b).item() for b in MULTI_BANDWIDTHS) / 4, rel=1e-6)
    assert mmd2_rbf(x, y, bandwidths=MULTI_BANDWIDTHS).item() != pytest.approx(mmd2_rbf(x, y).item(), rel=1e-3)


def test_mmd_is_zero_for_identical_samples_and_grows_with_a_mean_shift():
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(200, 8, generator=generator)
    assert mmd2_rbf(x, x.clone()).item() == pytest.approx(0.0, abs=1e-6)
    shifts = [mmd2_rbf(x, torch.randn(200, 8, generator=generator) + d).item() for d in (0.0, 0.5, 1.0, 2.0)]
    assert shifts == sorted(shifts)
    assert shifts[-1] > 10 * shifts[0]


def test_total_variation_is_the_mean_squared_neighbour_difference():
    field = torch.tensor([[[[0.0, 1.0, 3.0], [2.0, 2.0, 2.0]]]])
    # vertical pairs: 2-0, 2-1, 2-3 -> squares 4, 1, 1, mean 2
    # horizontal pairs: 1-0, 3-1, 2-2, 2-2 -> squares 1, 4, 0, 0, mean 1.25
    assert total_variation(field).item() == pytest.approx(2 + 1.25, rel=1e-6)


def test_total_variation_is_zero_on_a_constant_map_and_positive_on_an_edge():
    assert total_variation(torch.full((1, 1, 8, 8), 0.7)).item() == 0.0
    edge = torch.zeros(1, 1, 8, 8)
    edge[..., 4:] = 1
    assert total_variation(edge).item() > 0


def test_perceptual_falls_back_to_laplacian_pyramid_without_weights():
    module, note = build_perceptual(None)
    assert isinstance(module, LaplacianPyramidL1) and "fallback" in note
    image = torch.rand(1, 3, 32, 32)
    assert module(image, image).item() == 0.0
    assert module(image, image.flip(-1)).item() > 0


def test_perceptual_loads_lpips_from_a_local_safetensors_file(tmp_path):
    path = tmp_path / "lpips_vgg.safetensors"
    save_file({k: v.contiguous() for k, v in LPIPS().state_dict().items()}, str(path))
    module, note = build_perceptual(str(path))
    assert isinstance(module, LPIPS) and str(path) in note
    with pytest.raises(BadInput, match="not a weights file for LPIPS"):
        bad = tmp_path / "other.safetensors"
        save_file({"weight": torch.zeros(2)}, str(bad))
        build_perceptual(str(bad))


def test_the_critic_sees_generated_images_clamped_to_the_valid_range():
    reconstruction = Reconstruction({"weights": {"perceptual": 0.0}, "discriminator_width": 4}, allow_fallbacks=True)
    reconstruction.critic.eval()  # spectral norm's power iteration would otherwise change it between calls
    real = torch.rand(1, 3, 32, 32)
    inside = torch.rand(1, 3, 32, 32)
    blown_up = inside.clone()
    blown_up[..., :8, :8] = 50.0
    clamped = blown_up.clamp(0, 1)
    with torch.no_grad():
        assert reconstruction.generator_terms(blown_up, real)["gan"] == reconstruction.generator_terms(clamped, real)["gan"]


def test_the_mse_term_is_off_by_default_and_weighted_when_asked():
    fake = torch.zeros(1, 3, 4, 4)
    real = torch.full((1, 3, 4, 4), 0.5)
    plain = Reconstruction({"weights": {"perceptual": 0.0, "gan": 0.0}})
    assert set(plain.generator_terms(fake, real)) == {"l1"}
    fidelity = Reconstruction({"weights": {"l1": 0.0, "mse": 2.0, "perceptual": 0.0, "gan": 0.0}})
    terms = fidelity.generator_terms(fake, real)
    assert terms["mse"].item() == pytest.approx(2.0 * 0.25)
    assert terms["l1"].item() == 0.0


def test_a_weighted_term_without_its_pretrained_network_is_refused_unless_fallbacks_are_allowed():
    settings = {"weights": {"gan": 0.0}}
    with pytest.raises(BadInput, match=r"student\.lpips_weights.*--allow-fallbacks"):
        Reconstruction(settings, "student")
    allowed = Reconstruction(settings, "student", allow_fallbacks=True)
    assert allowed.pretrained == {"perceptual": "fallback Laplacian-pyramid L1 (no lpips_weights given)"}
    assert Reconstruction({"weights": {"perceptual": 0.0, "gan": 0.0}}, "student").pretrained == {}
