"""The teacher: one-step ẑ0 for ε and v prediction, LoRA-only training, a self-contained weights file,
and the paper-scale code paths (a local diffusers folder, a local DINO discriminator) at tiny size."""

import json

import pytest
import torch
from diffusers import UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer, Dinov2Config, Dinov2Model

from slimdiffsr_qgis.contract import BadInput
from backend.models import StudentConfig, build, feature_channels
from training.losses.adversarial import DinoDiscriminator, PatchDiscriminator, build_discriminator
from training.networks.backbone import load_backbone, scheduler_from
from training.networks.distillation import FeatureAdapters, capture, distillation_terms, teacher_modules
from training.networks.teacher import Teacher, TeacherConfig, load_teacher, one_step_x0, save_teacher
from training.networks.uncertainty_estimator import UncertaintyConfig, UncertaintyEstimator

torch.set_num_threads(1)
SMALL = TeacherConfig(unet_lora_rank=4, vae_lora_rank=2, predictor_width=8)


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_one_step_update_recovers_the_clean_latent_from_the_exact_model_output(prediction_type):
    generator = torch.Generator().manual_seed(0)
    z0, noise = torch.randn(2, 4, 8, 8, generator=generator), torch.randn(2, 4, 8, 8, generator=generator)
    alpha_bar = torch.rand(2, 1, 8, 8, generator=generator) * 0.9 + 0.05
    z_t = alpha_bar.sqrt() * z0 + (1 - alpha_bar).sqrt() * noise
    exact = noise if prediction_type == "epsilon" else alpha_bar.sqrt() * noise - (1 - alpha_bar).sqrt() * z0
    assert torch.allclose(one_step_x0(z_t, exact, alpha_bar, prediction_type), z0, atol=1e-5)


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_only_lora_and_predictor_train_and_gradients_reach_the_noise_level(prediction_type):
    teacher = Teacher(load_backbone("tiny", prediction_type), SMALL)
    trainable = [n for n, p in teacher.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n or n.startswith("predictor.") for n in trainable)
    assert any(n.startswith("vae.decoder.") for n in trainable)
    assert not any(n.startswith("vae.encoder.") for n in trainable)
    hr = torch.rand(1, 3, 32, 32)
    z = teacher.encode(hr)
    out = teacher(z, z, torch.ones_like(z))
    (out["hr"] - hr).abs().mean().backward()
    assert teacher.predictor.body[-1].bias.grad.abs().item() > 0
    assert out["t_map"].shape == (1, 1, 4, 4)


def test_teacher_file_rebuilds_the_same_teacher_with_its_estimator(tmp_path):
    torch.manual_seed(0)
    backbone = load_backbone("tiny", "v_prediction")
    teacher = Teacher(backbone, SMALL)
    with torch.no_grad():
        for name, parameter in teacher.named_parameters():
            if parameter.requires_grad:
                parameter.add_(0.01 * torch.randn_like(parameter))
    estimator = UncertaintyEstimator(UncertaintyConfig(width=8, blocks=1, groups=4))
    path = tmp_path / "teacher.safetensors"
    save_teacher(path, teacher.trainable_state(), estimator, SMALL, backbone, {"stage": "teacher"})
    loaded, loaded_estimator, meta = load_teacher(path)
    z = torch.randn(1, 4, 4, 4)
    with torch.no_grad():
        assert torch.allclose(loaded(z, z, torch.ones_like(z))["hr"], teacher.eval()(z, z, torch.ones_like(z))["hr"], atol=1e-6)
        assert torch.equal(loaded_estimator(z)[1], estimator(z)[1])
    assert meta["prediction_type"] == "v_prediction" and loaded.prediction_type == "v_prediction"


def test_backbone_loads_from_a_local_diffusers_folder_and_reads_its_prediction_type(tmp_path):
    tiny = load_backbone("tiny")
    tiny.unet.save_pretrained(tmp_path / "unet")
    tiny.vae.save_pretrained(tmp_path / "vae")
    scheduler_from("v_prediction").save_pretrained(tmp_path / "scheduler")
    backbone = load_backbone(str(tmp_path))
    assert backbone.prediction_type == "v_prediction"
    assert any("no text_encoder" in note for note in backbone.notes)
    assert torch.equal(backbone.unet.conv_in.weight, tiny.unet.conv_in.weight)
    with pytest.raises(BadInput, match="no 'unet/'"):
        load_backbone(str(tmp_path / "vae"))


def test_discriminator_starts_from_a_local_dino_folder_and_trains_its_backbone(tmp_path):
    config = Dinov2Config(hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32,
                          patch_size=8, image_size=32)
    torch.manual_seed(0)
    Dinov2Model(config).save_pretrained(tmp_path)
    saved = Dinov2Model.from_pretrained(tmp_path)
    critic, note = build_discriminator(str(tmp_path), 8)
    assert isinstance(critic, DinoDiscriminator) and "DINO" in note and "trained" in note
    for (name, ours), theirs in zip(critic.backbone.state_dict().items(), saved.state_dict().values()):
        assert torch.equal(ours, theirs), name
    assert critic.train().backbone.training
    image = torch.rand(2, 3, 40, 40, requires_grad=True)
    critic(image).mean().backward()
    assert image.grad.abs().sum() > 0
    assert critic.backbone.embeddings.patch_embeddings.projection.weight.grad.abs().sum() > 0


def test_the_frozen_dino_option_trains_the_heads_only(tmp_path):
    config = Dinov2Config(hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32,
                          patch_size=8, image_size=32)
    Dinov2Model(config).save_pretrained(tmp_path)
    critic, note = build_discriminator(str(tmp_path), 8, backbone="frozen")
    assert "frozen" in note
    assert not any(p.requires_grad for p in critic.backbone.parameters())
    assert all(p.requires_grad for p in critic.heads.parameters())
    assert not critic.train().backbone.training
    with pytest.raises(BadInput, match="discriminator_backbone"):
        build_discriminator(str(tmp_path), 8, backbone="half")


def test_discriminator_falls_back_to_patchgan_without_a_dino_folder():
    fallback, note = build_discriminator(None, 8)
    assert isinstance(fallback, PatchDiscriminator) and note.startswith("fallback")


def test_student_taps_pair_with_an_sd_layout_teacher_whose_deep_levels_are_coarser():
    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=8, block_out_channels=(32, 64, 64, 64), layers_per_block=1, cross_attention_dim=16,
        attention_head_dim=8, norm_num_groups=8,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    )
    student = build(StudentConfig.tiny(4))
    taps = list(feature_channels(student.config))
    lr = torch.rand(1, 3, 16, 16)
    with torch.no_grad(), capture(teacher_modules(unet, taps)) as teacher_features:
        unet(torch.randn(1, 4, 8, 8), torch.tensor([10.0]), encoder_hidden_states=torch.zeros(1, 2, 16))
    _, student_features = student.forward_features(lr)
    assert teacher_features["mid"].shape[-1] < student_features["mid"].shape[-1]
    adapters = FeatureAdapters(feature_channels(student.config), {t: f.shape[1] for t, f in teacher_features.items()})
    mse, mmd = distillation_terms(student_features, teacher_features, adapters, tokens=16)
    (mse + mmd).backward()
    assert torch.isfinite(mse) and mmd >= 0
    assert student.unet.conv_in.weight.grad.abs().sum() > 0


def test_null_prompt_is_the_folders_clip_embedding_of_the_empty_prompt(tmp_path):
    tiny = load_backbone("tiny")
    tiny.unet.save_pretrained(tmp_path / "unet")
    tiny.vae.save_pretrained(tmp_path / "vae")
    scheduler_from("epsilon").save_pretrained(tmp_path / "scheduler")
    (tmp_path / "vocab.json").write_text(json.dumps({"<|startoftext|>": 0, "<|endoftext|>": 1, "a</w>": 2, "a": 3}))
    (tmp_path / "merges.txt").write_text("#version: 0.2\n")
    tokenizer = CLIPTokenizer(str(tmp_path / "vocab.json"), str(tmp_path / "merges.txt"), model_max_length=8)
    tokenizer.save_pretrained(tmp_path / "tokenizer")
    encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=4, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
        max_position_embeddings=8, bos_token_id=0, eos_token_id=1, pad_token_id=1))
    encoder.save_pretrained(tmp_path / "text_encoder")
    backbone = load_backbone(str(tmp_path))
    with torch.no_grad():
        expected = encoder(torch.tensor([[0] + [1] * 7]))[0]
    assert torch.allclose(backbone.null_embedding, expected, atol=1e-6)
    assert any("CLIP embedding" in note for note in backbone.notes)
    teacher = Teacher(backbone, SMALL)
    assert torch.equal(teacher.trainable_state()["null_embedding"], backbone.null_embedding)


def test_the_spatial_time_embedding_equals_the_mean_one_on_a_flat_t_map_and_differs_on_a_varied_one():
    torch.manual_seed(0)
    teacher = Teacher(load_backbone("tiny"), SMALL)
    spatial = Teacher(load_backbone("tiny"), TeacherConfig(**{**SMALL.__dict__, "time_embedding": "spatial"}))
    spatial.load_state_dict(teacher.state_dict())
    z = torch.randn(1, 4, 8, 8)
    flat = torch.full((1, 1, 8, 8), 0.6)
    varied = torch.linspace(0.2, 0.9, 64).view(1, 1, 8, 8)
    with torch.no_grad():
        assert torch.allclose(spatial.denoise(z, flat)[0], teacher.denoise(z, flat)[0], atol=1e-5)
        assert not torch.allclose(spatial.denoise(z, varied)[0], teacher.denoise(z, varied)[0], atol=1e-3)
    alpha_bar = varied.clone().requires_grad_(True)
    spatial.denoise(z, alpha_bar)[0].sum().backward()
    assert alpha_bar.grad.abs().sum() > 0


def test_a_per_pixel_time_embedding_is_what_each_pixel_would_get_from_its_own_timestep():
    from training.networks.spatial_time import spatial_time

    torch.manual_seed(0)
    unet = load_backbone("tiny").unet.eval()
    z = torch.randn(1, 4, 8, 8)
    context = torch.zeros(1, 4, 32)
    t_map = torch.full((1, 1, 8, 8), 300.0)
    with torch.no_grad(), spatial_time(unet, t_map, z.dtype):
        # A uniform map at 300 with the UNet called at t = 700: every ResBlock sees 300.
        inside = unet(z, torch.tensor([700.0]), encoder_hidden_states=context).sample
    with torch.no_grad():
        mean_at_300 = unet(z, torch.tensor([300.0]), encoder_hidden_states=context).sample
        mean_at_700 = unet(z, torch.tensor([700.0]), encoder_hidden_states=context).sample
    assert torch.allclose(inside, mean_at_300, atol=1e-5)
    assert not torch.allclose(inside, mean_at_700, atol=1e-3)
    assert not unet.down_blocks[0].resnets[0].conv1._forward_hooks, "the hooks are removed on exit"


def test_teacher_file_keeps_the_time_embedding_choice(tmp_path):
    backbone = load_backbone("tiny")
    config = TeacherConfig(**{**SMALL.__dict__, "time_embedding": "spatial"})
    estimator = UncertaintyEstimator(UncertaintyConfig(width=8, blocks=1, groups=4))
    path = tmp_path / "teacher.safetensors"
    save_teacher(path, Teacher(backbone, config).trainable_state(), estimator, config, backbone, {})
    assert load_teacher(path)[0].config.time_embedding == "spatial"
    with pytest.raises(BadInput, match="time_embedding"):
        TeacherConfig(time_embedding="per-pixel")
