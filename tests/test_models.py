"""The model API, the S1 reformulation network, baselines and checkpoints on tiny models."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import opencir
from opencir.models import CheckpointError, PretrainedNotAvailableError, get_model_config
from opencir.models.reformulation import InstructCIR
from opencir.models.registry import list_backbones, list_methods

TINY = [n for n in opencir.list_models() if n.endswith("-tiny")]
TEXTS = ["make it blue", "add a small star", ""]


def test_registry_lists_tiny_and_paper_configs() -> None:
    names = opencir.list_models()
    for name in (
        "instructcir-tiny",
        "instructcir-vit-l-14",
        "image-only-tiny",
        "text-only-tiny",
        "sum-tiny",
        "combiner-tiny",
        "instructcir-siglip-tiny",
        "instructcir-siglip-b-16",
    ):
        assert name in names
    assert set(list_methods()) == {
        "instructcir",
        "image-only",
        "text-only",
        "sum",
        "combiner",
        "mllm",
    }
    assert "vit-l-14" in list_backbones()


def test_paper_config_matches_vit_l_14() -> None:
    vision = get_model_config("instructcir-vit-l-14").backbone.architecture["vision_config"]
    assert (vision["hidden_size"], vision["num_hidden_layers"], vision["patch_size"]) == (
        1024,
        24,
        14,
    )


def test_unknown_name_and_override_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown model name"):
        opencir.create_model("instructcir-vit-z-99")
    with pytest.raises(TypeError, match="unknown model override"):
        opencir.create_model("instructcir-tiny", emma=False)


@pytest.mark.parametrize("name", TINY)
def test_shapes_dtypes_and_normalisation(name: str, images: list[Image.Image]) -> None:
    model = opencir.create_model(name).eval()
    query = model.encode_query(images, TEXTS)
    target = model.encode_target(images)
    assert query.shape == target.shape == (3, model.embed_dim)
    assert query.dtype == target.dtype == torch.float32
    torch.testing.assert_close(query.norm(dim=-1), torch.ones(3))
    torch.testing.assert_close(target.norm(dim=-1), torch.ones(3))
    # a preprocessed tensor gives the same result as PIL images
    torch.testing.assert_close(model.encode_target(model.preprocess(images)), target)


def test_bad_inputs_are_named(images: list[Image.Image]) -> None:
    model = opencir.create_model("sum-tiny")
    with pytest.raises(ValueError, match="3 images but 2 texts"):
        model.encode_query(images, TEXTS[:2])
    with pytest.raises(TypeError, match="sequence of str"):
        model.encode_query(images[:1], "make it blue")
    with pytest.raises(ValueError, match=r"\[B, 3, H, W\]"):
        model.encode_target(torch.zeros(3, 32, 32))


def _s1_losses(model: InstructCIR, images: list[Image.Image]) -> torch.Tensor:
    pixels = model.preprocess(images)
    query = model.forward_query(pixels, model.tokenize(TEXTS))
    target = model.forward_target(pixels.flip(0))
    return F.cross_entropy(query @ target.T / 0.07, torch.arange(len(images)))


def test_gradients_reach_fusion_and_text_but_not_ema_target(images: list[Image.Image]) -> None:
    model = opencir.create_model("instructcir-tiny", combiner=True)
    _s1_losses(model, images).backward()
    encoder = model.query_encoder
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in encoder.cross.parameters())
    assert all(p.grad is not None for p in encoder.predictor.parameters())
    text_grads = [p.grad for p in encoder.tower.hf.text_model.parameters()]
    assert any(g is not None and g.abs().sum() > 0 for g in text_grads)
    assert model.combiner_logit.grad is not None
    assert all(p.grad is None and not p.requires_grad for p in model.target_encoder.parameters())


def test_without_ema_targets_share_the_query_encoder(images: list[Image.Image]) -> None:
    model = opencir.create_model("instructcir-tiny", ema=False)
    assert model.target_encoder is None
    _s1_losses(model, images).backward()
    assert model.target_network is model.query_encoder


def test_ema_update_matches_formula() -> None:
    model = opencir.create_model("instructcir-tiny", ema_momentum=0.9)
    with torch.no_grad():
        for p in model.query_encoder.parameters():
            p.add_(torch.randn_like(p))
    before = [p.clone() for p in model.target_encoder.parameters()]
    online = [p.clone() for p in model.query_encoder.parameters()]
    model.ema_update()
    for old, new, q in zip(before, model.target_encoder.parameters(), online, strict=True):
        torch.testing.assert_close(new, 0.9 * old + 0.1 * q)


def test_ema_momentum_one_keeps_the_starting_target() -> None:
    model = opencir.create_model("instructcir-tiny", ema_momentum=1.0)
    before = [p.clone() for p in model.target_encoder.parameters()]
    with torch.no_grad():
        for p in model.query_encoder.parameters():
            p.add_(torch.randn_like(p))
    model.ema_update()
    for old, new in zip(before, model.target_encoder.parameters(), strict=True):
        torch.testing.assert_close(new, old, rtol=0, atol=0)
    with pytest.raises(ValueError, match="ema_momentum"):
        opencir.create_model("instructcir-tiny", ema_momentum=1.5)


def test_target_path_is_the_encoder_on_null_text(images: list[Image.Image]) -> None:
    model = opencir.create_model("instructcir-tiny").eval()
    with torch.no_grad():  # make the EMA copy differ from the query encoder
        for p in model.query_encoder.parameters():
            p.add_(0.1 * torch.randn_like(p))
    pixels = model.preprocess(images)
    null = model.tokenize([""] * len(images))
    with torch.no_grad():
        expected, _ = model.target_encoder(pixels, null["input_ids"], null["attention_mask"])
    torch.testing.assert_close(model.encode_target(images), F.normalize(expected, dim=-1))


def test_cross_attention_disabled_equals_plain_backbone(images: list[Image.Image]) -> None:
    model = opencir.create_model("instructcir-tiny", cross_attention=False).eval()
    encoder = model.query_encoder
    pixels = model.preprocess(images)
    text = encoder.tower.encode_text(**model.tokenize(TEXTS))
    with torch.no_grad():
        ours = encoder.reformulate(pixels, text)
        reference = encoder.tower.hf.get_image_features(pixel_values=pixels)
    reference = getattr(reference, "pooler_output", reference)
    torch.testing.assert_close(ours, reference, rtol=1e-5, atol=1e-5)


def test_zero_init_with_residual_predictor_starts_as_the_backbone(images) -> None:
    model = opencir.create_model(
        "instructcir-tiny", cross_attention_zero_init=True, predictor_residual=True
    ).eval()
    pixels = model.preprocess(images)
    with torch.no_grad():
        backbone = F.normalize(model.query_encoder.tower.encode_image(pixels), dim=-1)
        query = model.encode_query(images, ["make it blue"] * 3)
        target = model.encode_target(images)
    torch.testing.assert_close(query, backbone, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(target, backbone, rtol=1e-5, atol=1e-5)
    xavier = opencir.create_model("instructcir-tiny", predictor_residual=True).eval()
    with torch.no_grad():  # the paper's Xavier init perturbs the features from the start
        own = F.normalize(xavier.query_encoder.tower.encode_image(pixels), dim=-1)
        assert not torch.allclose(xavier.encode_target(images), own, atol=1e-3)


def test_extra_blocks_start_as_the_backbone_and_round_trip(images, tmp_path) -> None:
    model = opencir.create_model(
        "instructcir-tiny", cross_attention_zero_init=True, predictor_residual=True, extra_blocks=2
    ).eval()
    encoder = model.query_encoder
    assert (
        len(encoder.extra_layers) == 2
        and len(encoder.cross) == len(encoder.tower.vision_layers) + 2
    )
    pixels = model.preprocess(images)
    with torch.no_grad():
        backbone = F.normalize(encoder.tower.encode_image(pixels), dim=-1)
        torch.testing.assert_close(
            model.encode_query(images, TEXTS), backbone, rtol=1e-5, atol=1e-5
        )
        torch.testing.assert_close(model.encode_target(images), backbone, rtol=1e-5, atol=1e-5)
    # the residual branches of an extra block receive gradients: training can move them
    query = model.train().forward_query(pixels, model.tokenize(TEXTS))
    query.sum().backward()
    assert encoder.extra_layers[0].self_attn.out_proj.weight.grad.abs().sum() > 0
    with torch.no_grad():  # a moved extra block changes the query, and survives save/load
        encoder.extra_layers[1].mlp.fc2.weight.normal_(0, 0.5)
        encoder.cross[-1].out_proj.weight.normal_(0, 0.5)
    model.eval().save(tmp_path / "ckpt")
    loaded = opencir.load(tmp_path / "ckpt")
    assert loaded.config.fusion.extra_blocks == 2
    moved = model.encode_query(images, TEXTS)
    assert not torch.allclose(moved, backbone, atol=1e-3)
    assert torch.equal(loaded.encode_query(images, TEXTS), moved)


def test_extra_blocks_need_cross_attention() -> None:
    with pytest.raises(ValueError, match="extra_blocks needs cross_attention"):
        opencir.create_model("instructcir-tiny", cross_attention=False, extra_blocks=1)
    with pytest.raises(ValueError, match="extra_blocks must be >= 0"):
        opencir.create_model("instructcir-tiny", extra_blocks=-1)


def test_cross_attention_changes_the_image_embedding_with_text(images: list[Image.Image]) -> None:
    model = opencir.create_model("instructcir-tiny").eval()
    a = model.encode_query(images, ["make it blue"] * 3)
    b = model.encode_query(images, ["remove the star"] * 3)
    assert not torch.allclose(a, b)


@pytest.mark.parametrize("name", ["instructcir-tiny", "combiner-siglip-tiny", "sum-tiny"])
def test_save_load_is_bit_identical(name: str, tmp_path, images: list[Image.Image]) -> None:
    model = opencir.create_model(name, **({"combiner": True} if "instructcir" in name else {}))
    model.eval()
    model.save(tmp_path / "ckpt")
    loaded = opencir.load(tmp_path / "ckpt")
    assert loaded.config == model.config
    assert torch.equal(loaded.encode_query(images, TEXTS), model.encode_query(images, TEXTS))
    assert torch.equal(loaded.encode_target(images), model.encode_target(images))
    assert loaded.fingerprint() == model.fingerprint()


def test_save_replaces_an_existing_checkpoint(tmp_path) -> None:
    first, second = opencir.create_model("sum-tiny"), opencir.create_model("sum-tiny")
    first.save(tmp_path / "ckpt")
    second.save(tmp_path / "ckpt")
    assert opencir.load(tmp_path / "ckpt").fingerprint() == second.fingerprint()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]


def test_checkpoint_config_tensor_mismatch_is_refused(tmp_path) -> None:
    opencir.create_model("instructcir-tiny").save(tmp_path / "ckpt")
    config_path = tmp_path / "ckpt" / "config.json"
    data = json.loads(config_path.read_text())
    data["model"]["fusion"]["cross_attention"] = False
    data["model"]["fusion"]["predictor_hidden_mult"] = 3
    config_path.write_text(json.dumps(data))
    with pytest.raises(CheckpointError, match=r"unexpected: .*cross.*shape mismatch: .*predictor"):
        opencir.load(tmp_path / "ckpt")


def test_loading_a_non_checkpoint_is_refused(tmp_path) -> None:
    with pytest.raises(CheckpointError, match=r"config\.json is missing"):
        opencir.load(tmp_path)


def test_missing_local_pretrained_directory_gives_clear_error(tmp_path) -> None:
    with pytest.raises(PretrainedNotAvailableError, match=r"(?s)no such directory.*pretrained=DIR"):
        opencir.create_model("instructcir-vit-l-14", pretrained=str(tmp_path / "nothing-here"))


def test_unavailable_hub_id_offline_gives_clear_error(monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(PretrainedNotAvailableError, match="openai/clip-vit-large-patch14"):
        opencir.create_model("instructcir-vit-l-14", pretrained=True)


def test_ema_leaves_copies_of_frozen_weights_bit_identical() -> None:
    model = opencir.create_model("instructcir-tiny", ema_momentum=0.9)
    text = model.query_encoder.tower.hf.text_model
    text.requires_grad_(False)
    before = {n: p.clone() for n, p in model.target_encoder.named_parameters()}
    with torch.no_grad():
        for p in model.query_encoder.parameters():
            p.add_(1.0)
    model.ema_update()
    for name, value in model.target_encoder.named_parameters():
        assert torch.equal(value, before[name]) == (".text_model." in name), name
