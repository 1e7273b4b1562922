"""The fast encoder paths compute what the plain Hugging Face / textbook paths compute."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import opencir
from opencir.models.backbones import CLIPTower, feed_forward, quick_gelu_mlp
from opencir.models.reformulation import CrossAttention, InstructCIR

TEXTS = ["make it blue", "add a small star on top", ""]


@pytest.fixture
def model() -> InstructCIR:
    return opencir.create_model("instructcir-tiny").eval()


def test_fused_quick_gelu_mlp_matches_the_hf_module_forward_and_backward() -> None:
    layer = opencir.create_model("sum-tiny").tower.vision_layers[0]
    mlp = layer.mlp
    x = torch.randn(2, 5, mlp.fc1.in_features, requires_grad=True)
    ours = quick_gelu_mlp(mlp.fc1, mlp.fc2, x)
    (ours_grad,) = torch.autograd.grad(ours.square().sum(), x)
    reference = mlp(x)
    (reference_grad,) = torch.autograd.grad(reference.square().sum(), x)
    torch.testing.assert_close(ours, reference, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(ours_grad, reference_grad, rtol=1e-5, atol=1e-5)


def test_feed_forward_keeps_other_activations_on_the_module_path() -> None:
    tower = opencir.create_model("sum-siglip-tiny").tower  # gelu-tanh, not quick-GELU
    layer = tower.vision_layers[0]
    x = torch.randn(2, 4, tower.vision_width)
    expected = x + layer.mlp(layer.layer_norm2(x))
    torch.testing.assert_close(feed_forward(layer, x), expected)


def test_clip_text_path_matches_hf_on_every_real_token(model: InstructCIR) -> None:
    tower = model.query_encoder.tower
    assert isinstance(tower, CLIPTower)
    tokens = model.tokenize(TEXTS)
    with torch.no_grad():
        ours = tower.encode_text(tokens["input_ids"], tokens["attention_mask"])
        reference = tower.hf.text_model(**tokens).last_hidden_state
    real = tokens["attention_mask"].bool()
    assert not real.all()  # the batch really has padding
    torch.testing.assert_close(ours.tokens[real], reference[real], rtol=1e-5, atol=1e-5)
    last = real.sum(1) - 1
    pooled = tower.hf.text_projection(reference[torch.arange(len(TEXTS)), last])
    torch.testing.assert_close(ours.pooled, pooled, rtol=1e-5, atol=1e-5)


def _textbook_cross_attention(
    cross: CrossAttention, x: torch.Tensor, text: torch.Tensor, mask: torch.Tensor
) -> torch.Tensor:
    """Softmax(QKᵀ/√d)V written out, padding keys set to -inf."""
    batch, width = x.shape[0], x.shape[-1]
    heads, dim = cross.num_heads, width // cross.num_heads

    def split(t: torch.Tensor) -> torch.Tensor:
        return t.reshape(batch, t.shape[1], heads, dim).transpose(1, 2)

    q = split(cross.q_proj(cross.norm(x)))
    k, v = split(cross.k_proj(text)), split(cross.v_proj(text))
    scores = q @ k.transpose(-1, -2) / math.sqrt(dim)
    scores = scores.masked_fill(~mask[:, None, None, :], float("-inf"))
    out = (scores.softmax(-1) @ v).transpose(1, 2).reshape(batch, -1, width)
    return x + cross.out_proj(out)


def _reference_query(model: InstructCIR, pixels: torch.Tensor, tokens: dict) -> torch.Tensor:
    """S1's query embedding through HF's own attention/MLP modules and textbook attention."""
    encoder = model.query_encoder
    hf = encoder.tower.hf
    text = hf.text_model(**tokens).last_hidden_state
    mask = tokens["attention_mask"].bool()
    x = hf.vision_model.pre_layrnorm(hf.vision_model.embeddings(pixels))
    for layer, cross in zip(encoder.tower.vision_layers, encoder.cross, strict=True):
        x = x + layer.self_attn(layer.layer_norm1(x))[0]
        x = _textbook_cross_attention(cross, x, text, mask)
        x = x + layer.mlp(layer.layer_norm2(x))
    image = hf.visual_projection(hf.vision_model.post_layernorm(x[:, 0]))
    pooled = hf.text_projection(text[torch.arange(len(text)), mask.sum(1) - 1])
    return encoder.predictor(image, pooled)


def test_query_encoder_equals_the_reference_path(model: InstructCIR) -> None:
    pixels = torch.randn(len(TEXTS), 3, 32, 32)
    tokens = model.tokenize(TEXTS)
    with torch.no_grad():
        ours, _ = model.query_encoder(pixels, tokens["input_ids"], tokens["attention_mask"])
        reference = _reference_query(model, pixels, tokens)
    torch.testing.assert_close(ours, reference, rtol=1e-4, atol=1e-5)


def test_one_text_for_the_batch_is_projected_once_and_matches_repeating_it() -> None:
    cross = CrossAttention(vision_width=16, text_width=8, num_heads=2)
    x = torch.randn(4, 5, 16)
    one = opencir.models.backbones.TextFeatures(torch.randn(1, 3, 8), None, torch.randn(1, 6))
    repeated = opencir.models.backbones.TextFeatures(one.tokens.repeat(4, 1, 1), None, one.pooled)
    seen: list[int] = []
    cross.k_proj.register_forward_hook(lambda _m, args, _out: seen.append(args[0].shape[0]))
    torch.testing.assert_close(cross(x, one), cross(x, repeated))
    assert seen == [1, 4]


def _count_text_runs(model: InstructCIR) -> list[int]:
    runs: list[int] = []
    embeddings = model.target_encoder.tower.hf.text_model.embeddings
    embeddings.register_forward_hook(lambda *_: runs.append(1))
    return runs


def test_null_text_is_encoded_once_until_a_weight_changes(model: InstructCIR) -> None:
    runs = _count_text_runs(model)
    pixels = torch.randn(2, 3, 32, 32)
    first = model.encode_target(pixels)
    torch.testing.assert_close(model.encode_target(pixels), first)
    assert len(runs) == 1
    text = model.target_encoder.tower.hf.text_model
    with torch.no_grad():
        text.final_layer_norm.bias.add_(0.5)  # an in-place change, as EMA/optimizers do
    changed = model.encode_target(pixels)
    assert len(runs) == 2
    assert not torch.allclose(changed, first)
    null = model.tokenize([""] * 2)
    with torch.no_grad():
        expected, _ = model.target_encoder(pixels, null["input_ids"], null["attention_mask"])
    torch.testing.assert_close(changed, F.normalize(expected, dim=-1))


def test_null_text_is_recomputed_when_autograd_records(model: InstructCIR) -> None:
    model = opencir.create_model("instructcir-tiny", ema=False).train()
    runs: list[int] = []
    model.query_encoder.tower.hf.text_model.embeddings.register_forward_hook(
        lambda *_: runs.append(1)
    )
    pixels = torch.randn(2, 3, 32, 32)
    model.forward_target(pixels).sum().backward()
    model.forward_target(pixels).sum().backward()
    assert len(runs) == 2
    grads = [p.grad for p in model.query_encoder.tower.hf.text_model.parameters()]
    assert any(g is not None and g.abs().sum() > 0 for g in grads)


def test_fast_paths_keep_gradients_flowing_to_every_trained_block(model: InstructCIR) -> None:
    model.train()
    tokens = model.tokenize(TEXTS)
    query = model.forward_query(torch.randn(3, 3, 32, 32), tokens)
    query.square().sum().backward()
    encoder = model.query_encoder
    for module in (*encoder.tower.vision_layers, *encoder.tower.hf.text_model.encoder.layers):
        assert all(isinstance(p.grad, torch.Tensor) for p in module.parameters())


def test_onnx_backend_gives_the_models_embeddings(model: InstructCIR, tmp_path) -> None:
    pytest.importorskip("onnxruntime")
    from opencir.models.onnx_export import OnnxRetriever, with_backend

    retriever = with_backend(model, "onnx", directory=tmp_path)
    assert isinstance(retriever, OnnxRetriever)
    assert {p.name for p in tmp_path.iterdir()} == {"query.onnx", "target.onnx"}
    # batch size and text length other than the export sample's: the axes are dynamic
    pixels = torch.randn(5, 3, 32, 32)
    texts = ["a", "make it a lot bluer, please", "", "x", "turn it"]
    torch.testing.assert_close(
        retriever.encode_query(pixels, texts), model.encode_query(pixels, texts), atol=1e-5, rtol=0
    )
    torch.testing.assert_close(
        retriever.encode_target(pixels[:1]), model.encode_target(pixels[:1]), atol=1e-5, rtol=0
    )
    assert retriever.fingerprint() != model.fingerprint()
    with pytest.raises(ValueError, match="2 images but 1 texts"):
        retriever.encode_query(pixels[:2], ["one"])


def test_unknown_backend_is_refused(model: InstructCIR) -> None:
    from opencir.models.onnx_export import with_backend

    assert with_backend(model, "torch") is model
    with pytest.raises(ValueError, match="unknown encoder backend 'tensorrt'"):
        with_backend(model, "tensorrt")


def _encode_both(model: InstructCIR, pixels: torch.Tensor) -> torch.Tensor:
    return torch.cat([model.encode_query(pixels, TEXTS), model.encode_target(pixels)])


def test_onednn_inference_path_matches_the_standard_linears(model: InstructCIR) -> None:
    from opencir.models import backbones

    pixels = torch.randn(3, 3, 32, 32)
    fast = _encode_both(model, pixels)
    backbones.set_onednn_linear(False)
    try:
        reference = _encode_both(model, pixels)
    finally:
        backbones.set_onednn_linear(True)
    torch.testing.assert_close(fast, reference, atol=1e-5, rtol=0)


def test_onednn_packed_weights_follow_in_place_weight_changes(model: InstructCIR) -> None:
    from opencir.models import backbones

    pixels = torch.randn(3, 3, 32, 32)
    before = model.encode_query(pixels, TEXTS)
    with torch.no_grad():
        for layer in model.query_encoder.tower.vision_layers:
            layer.mlp.fc1.weight.mul_(1.5)  # as an optimizer step would, in place
            layer.self_attn.q_proj.bias.add_(0.3)
    after = model.encode_query(pixels, TEXTS)
    assert not torch.allclose(after, before, atol=1e-3)
    backbones.set_onednn_linear(False)
    try:
        reference = model.encode_query(pixels, TEXTS)
    finally:
        backbones.set_onednn_linear(True)
    torch.testing.assert_close(after, reference, atol=1e-5, rtol=0)
