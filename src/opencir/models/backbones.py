"""Dual-encoder backbones over Hugging Face ``transformers``: one interface for CLIP and SigLIP.

A :class:`DualTower` exposes exactly what composed retrieval needs:

* the vision transformer block by block (``vision_tokens`` → ``vision_layers`` →
  ``pool_image``), so S1 can insert cross-attention between self-attention and MLP;
* the text encoder's token sequence *and* its pooled, projected embedding;
* the embedding width, head count and widths of both towers.

Each block runs through :func:`self_attention` and :func:`feed_forward`, which reuse the
pretrained layer's own weights but compute attention with PyTorch's fused
``scaled_dot_product_attention``; CLIP's quick-GELU MLP runs as two matmuls around a single
``silu`` (see :func:`quick_gelu_mlp`); in CPU float32 inference the linears run through
oneDNN-packed copies of their weights (see :func:`linear`).
"""

from __future__ import annotations

import weakref
from abc import ABC, abstractmethod
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import (
    CLIPConfig,
    CLIPModel,
    PreTrainedModel,
    SiglipConfig,
    SiglipModel,
    VisionTextDualEncoderConfig,
    VisionTextDualEncoderModel,
)
from transformers.activations import QuickGELUActivation


@dataclass
class TextFeatures:
    """The text encoder's output: per-token states, their padding mask, the pooled embedding."""

    tokens: torch.Tensor  # [B, L, W_text]
    mask: torch.Tensor | None  # [B, L] bool, True where a real token is (None: attend to all)
    pooled: torch.Tensor  # [B, D] in the joint embedding space


def self_attention(
    layer: nn.Module, x: torch.Tensor, num_heads: int, causal: bool = False
) -> torch.Tensor:
    """Pre-norm multi-head self-attention of an HF CLIP layer with its residual, via SDPA."""
    attn = layer.self_attn
    h = layer.layer_norm1(x)
    q, k, v = linear(attn.q_proj, h), linear(attn.k_proj, h), linear(attn.v_proj, h)
    return x + linear(attn.out_proj, multi_head_attention(q, k, v, num_heads, causal=causal))


def feed_forward(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Pre-norm MLP of an HF ViT layer with its residual."""
    mlp, h = layer.mlp, layer.layer_norm2(x)
    if _is_quick_gelu_mlp(mlp):
        return x + quick_gelu_mlp(mlp.fc1, mlp.fc2, h)
    return x + mlp(h)


QUICK_GELU_SCALE = 1.702  # quick_gelu(y) = y · sigmoid(1.702 · y), as OpenAI CLIP defines it


def _is_quick_gelu_mlp(mlp: nn.Module) -> bool:
    fc1, fc2 = getattr(mlp, "fc1", None), getattr(mlp, "fc2", None)
    return (
        isinstance(getattr(mlp, "activation_fn", None), QuickGELUActivation)
        and isinstance(fc1, nn.Linear)
        and isinstance(fc2, nn.Linear)
        and fc1.bias is not None
        and fc2.bias is not None
    )


def quick_gelu_mlp(fc1: nn.Linear, fc2: nn.Linear, h: torch.Tensor) -> torch.Tensor:
    """``fc2(quick_gelu(fc1(h)))`` with one elementwise pass over the wide hidden layer.

    quick_gelu(y) = silu(s·y) / s with s = 1.702. The factor s rides on fc1's matmul (addmm's
    ``alpha``/``beta``) and 1/s on fc2's, so the activation is a single ``silu`` instead of
    the three passes (scale, sigmoid, multiply) of the eager module; in training its backward
    is one pass as well. Same weights, same result up to float rounding.
    """
    s = QUICK_GELU_SCALE
    if _onednn_applies(h, fc1.weight):
        hidden = _onednn_linear(fc1, h, scale=s, activation="swish")
        return _onednn_linear(fc2, hidden, scale=1.0 / s, scale_bias=False)
    flat = h.reshape(-1, h.shape[-1])
    hidden = torch.addmm(fc1.bias, flat, fc1.weight.t(), beta=s, alpha=s)
    hidden = F.silu(hidden, inplace=not torch.is_grad_enabled())
    out = torch.addmm(fc2.bias, hidden, fc2.weight.t(), alpha=1.0 / s)
    return out.view(*h.shape[:-1], out.shape[-1])


# oneDNN linears for CPU float32 inference -------------------------------------------------
# On some CPUs (the AMD EPYC of docs/PERFORMANCE.md) PyTorch's default float32 GEMM reaches
# half of what oneDNN reaches with a weight packed once into its blocked layout. Without
# autograd, the blocks' linears run through such a packed copy, made on first use and remade
# when the weight changes (its version counter or storage). Training and GPUs are unaffected.

_ONEDNN = {"enabled": True}
# id(weight) → (weak reference to the weight, {(scale, scale_bias): (key, packed, bias)})
_PACKED: dict[int, tuple[weakref.ref, dict]] = {}


def set_onednn_linear(enabled: bool) -> None:
    """Switch the oneDNN path for CPU float32 inference on (default) or off."""
    _ONEDNN["enabled"] = bool(enabled)


def _onednn_applies(x: torch.Tensor, weight: torch.Tensor) -> bool:
    return (
        _ONEDNN["enabled"]
        and not torch.is_grad_enabled()
        and x.device.type == "cpu"
        and x.dtype == weight.dtype == torch.float32
        and torch.backends.mkldnn.is_available()
        and torch.backends.mkldnn.enabled
        and not torch.jit.is_tracing()
        and not torch.compiler.is_compiling()
        and not _dispatch_mode_active()
    )


def _dispatch_mode_active() -> bool:
    """A dispatch mode (FLOP counting, export) must see the standard ops, not oneDNN's."""
    return torch._C._len_torch_dispatch_stack() > 0


def _packed(linear_: nn.Linear, scale: float, scale_bias: bool) -> tuple[torch.Tensor, ...]:
    weight, bias = linear_.weight, linear_.bias
    key = (weight.data_ptr(), weight._version, scale, scale_bias)
    if bias is not None:
        key += (bias.data_ptr(), bias._version)
    entries = _packs_of(weight)
    cached = entries.get((scale, scale_bias))
    if cached is None or cached[0] != key:
        with torch.inference_mode(False), torch.no_grad():
            packed = torch.ops.mkldnn._reorder_linear_weight(weight.detach() * scale)
            b = None if bias is None else bias.detach() * (scale if scale_bias else 1.0)
        cached = entries[(scale, scale_bias)] = (key, packed, b)
    return cached[1], cached[2]


def _packs_of(weight: torch.Tensor) -> dict:
    """The packed copies of ``weight``, dropped when the weight itself is freed."""
    index = id(weight)
    entry = _PACKED.get(index)
    if entry is None or entry[0]() is not weight:
        ref = weakref.ref(weight, lambda _: _PACKED.pop(index, None))
        entry = _PACKED[index] = (ref, {})
    return entry[1]


def _onednn_linear(
    linear_: nn.Linear,
    x: torch.Tensor,
    scale: float = 1.0,
    activation: str = "none",
    scale_bias: bool = True,
) -> torch.Tensor:
    """``activation(scale · linear_(x))`` (bias scaled too unless ``scale_bias`` is False)."""
    packed, bias = _packed(linear_, scale, scale_bias)
    return torch.ops.mkldnn._linear_pointwise(x, packed, bias, activation, [], "")


def linear(module: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    """``module(x)``; through a oneDNN-packed weight in CPU float32 inference."""
    if isinstance(module, nn.Linear) and _onednn_applies(x, module.weight):
        return _onednn_linear(module, x)
    return module(x)


def multi_head_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    num_heads: int,
    key_mask: torch.Tensor | None = None,
    causal: bool = False,
) -> torch.Tensor:
    """Split heads, run fused SDPA, merge heads; ``key_mask`` is ``[B, L]`` bool, True = keep."""
    batch, q_len, width = q.shape
    head_dim = width // num_heads

    def heads(t: torch.Tensor) -> torch.Tensor:
        return t.view(batch, t.shape[1], num_heads, head_dim).transpose(1, 2)

    mask = None if key_mask is None else key_mask[:, None, None, :]
    out = F.scaled_dot_product_attention(
        heads(q), heads(k), heads(v), attn_mask=mask, is_causal=causal
    )
    return out.transpose(1, 2).reshape(batch, q_len, width)


class DualTower(nn.Module, ABC):
    """Common interface over an HF dual-encoder model (held as ``self.hf``)."""

    family: str = ""

    def __init__(self, hf: PreTrainedModel) -> None:
        super().__init__()
        self.hf = hf

    @property
    def vision_layers(self) -> nn.ModuleList:
        return self.hf.vision_model.encoder.layers

    @property
    def vision_width(self) -> int:
        return self.hf.config.vision_config.hidden_size

    @property
    def text_width(self) -> int:
        return self.hf.config.text_config.hidden_size

    @property
    def vision_heads(self) -> int:
        return self.hf.config.vision_config.num_attention_heads

    @property
    @abstractmethod
    def embed_dim(self) -> int:
        """Width of the joint image–text embedding space."""

    @abstractmethod
    def vision_tokens(self, pixels: torch.Tensor) -> torch.Tensor:
        """Patch (+class) token sequence entering the first block."""

    @abstractmethod
    def pool_image(self, tokens: torch.Tensor) -> torch.Tensor:
        """Final token sequence → image embedding in the joint space (unnormalised)."""

    @abstractmethod
    def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> TextFeatures:
        """Token ids → per-token states and pooled, projected embedding."""

    def logit_parameters(self) -> list[nn.Parameter]:
        """The image–text logit scale/bias: used by pretraining only, never by CIR forwards."""
        names = ("logit_scale", "logit_bias")
        return [p for name in names if (p := getattr(self.hf, name, None)) is not None]

    def unused_parameters(self) -> list[nn.Parameter]:
        """Weights no embedding computed here ever touches (kept only for checkpoint fidelity)."""
        return []

    def run_block(self, index: int, x: torch.Tensor) -> torch.Tensor:
        layer = self.vision_layers[index]
        return feed_forward(layer, self_attention(layer, x, self.vision_heads))

    def encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        """The plain backbone image embedding (no text), unnormalised."""
        return self.pool_image(self.image_states(pixels))

    def image_states(self, pixels: torch.Tensor) -> torch.Tensor:
        """The ViT's final token sequence (no text)."""
        x = self.vision_tokens(pixels)
        for index in range(len(self.vision_layers)):
            x = self.run_block(index, x)
        return x

    def patch_embeddings(self, tokens: torch.Tensor) -> torch.Tensor:
        """Final token sequence → each patch token in the joint space ``[B, N, D]``
        (unnormalised), row-major over the patch grid: what a region loss pools."""
        raise ValueError(f"{type(self).__name__} has no class token to tell patches from")


class CLIPTower(DualTower):
    """OpenAI CLIP layout: class token, pre-LN, post-LN on the class token, linear projections."""

    family = "clip"

    @property
    def embed_dim(self) -> int:
        return self.hf.config.projection_dim

    def vision_tokens(self, pixels: torch.Tensor) -> torch.Tensor:
        vision = self.hf.vision_model
        return vision.pre_layrnorm(vision.embeddings(pixels))

    def pool_image(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.hf.visual_projection(self.hf.vision_model.post_layernorm(tokens[:, 0]))

    def patch_embeddings(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.hf.visual_projection(self.hf.vision_model.post_layernorm(tokens[:, 1:]))

    def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> TextFeatures:
        states = self.text_states(input_ids)
        # CLIP pools at the end-of-text token, which is the last real token (right padding).
        last = attention_mask.sum(dim=1) - 1
        pooled = states[torch.arange(states.shape[0], device=states.device), last]
        return TextFeatures(states, attention_mask.bool(), self.hf.text_projection(pooled))

    def text_states(self, input_ids: torch.Tensor) -> torch.Tensor:
        """The text transformer's final states, block by block through the fused paths.

        With right padding, causal attention alone is exact for every real token: a token
        sees only earlier positions, all of them real. So no padding mask is built and SDPA
        runs its causal kernel. States at padding positions are never used (cross-attention
        masks them, pooling reads the last real token).
        """
        text = self.hf.text_model
        heads = self.hf.config.text_config.num_attention_heads
        x = text.embeddings(input_ids=input_ids)
        for layer in text.encoder.layers:
            x = feed_forward(layer, self_attention(layer, x, heads, causal=True))
        return text.final_layer_norm(x)


class SiglipTower(DualTower):
    """SigLIP layout: no class token, attention-pooling head, text pooled at the last position.

    SigLIP was trained on max-length padded text *without* an attention mask; we keep that,
    so cross-attention also sees every position.
    """

    family = "siglip"

    @property
    def embed_dim(self) -> int:
        return self.hf.config.vision_config.hidden_size

    def vision_tokens(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.hf.vision_model.embeddings(pixels)

    def pool_image(self, tokens: torch.Tensor) -> torch.Tensor:
        vision = self.hf.vision_model
        tokens = vision.post_layernorm(tokens)
        if getattr(vision, "use_head", True) and hasattr(vision, "head"):
            return vision.head(tokens)
        return tokens.mean(dim=1)

    def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> TextFeatures:
        out = self.hf.text_model(input_ids=input_ids)
        return TextFeatures(out.last_hidden_state, None, out.pooler_output)


class DualEncoderTower(DualTower):
    """A CLIP-layout ViT paired with any BERT-style text encoder (HF VisionTextDualEncoder).

    Lets a small vision transformer trained from scratch sit beside a pretrained sentence
    encoder (e.g. all-MiniLM-L6-v2). Text is mean-pooled over real tokens, as sentence
    encoders are trained, then projected into the joint space.
    """

    family = "dual"

    @property
    def _vision(self) -> nn.Module:
        vision = self.hf.vision_model  # CLIPVisionModel; older transformers nest one level deeper
        return getattr(vision, "vision_model", vision)

    @property
    def vision_layers(self) -> nn.ModuleList:
        return self._vision.encoder.layers

    @property
    def embed_dim(self) -> int:
        return self.hf.config.projection_dim

    def vision_tokens(self, pixels: torch.Tensor) -> torch.Tensor:
        return self._vision.pre_layrnorm(self._vision.embeddings(pixels))

    def pool_image(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.hf.visual_projection(self._vision.post_layernorm(tokens[:, 0]))

    def patch_embeddings(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.hf.visual_projection(self._vision.post_layernorm(tokens[:, 1:]))

    def unused_parameters(self) -> list[nn.Parameter]:
        """BERT's pooler: we mean-pool instead, as sentence encoders are trained."""
        pooler = getattr(self.hf.text_model, "pooler", None)
        return [] if pooler is None else list(pooler.parameters())

    def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> TextFeatures:
        states = self.hf.text_model(input_ids=input_ids, attention_mask=attention_mask)
        states = states.last_hidden_state
        weights = attention_mask.unsqueeze(-1).to(states.dtype)
        pooled = (states * weights).sum(1) / weights.sum(1).clamp(min=1.0)
        return TextFeatures(states, attention_mask.bool(), self.hf.text_projection(pooled))


@dataclass(frozen=True)
class Family:
    """How to build one backbone family from a config dict or from pretrained weights."""

    tower: type[DualTower]
    hf_model: type[PreTrainedModel]
    hf_config: type
    pad_to_max_length: bool


FAMILIES: dict[str, Family] = {
    "clip": Family(CLIPTower, CLIPModel, CLIPConfig, pad_to_max_length=False),
    "siglip": Family(SiglipTower, SiglipModel, SiglipConfig, pad_to_max_length=True),
    "dual": Family(
        DualEncoderTower,
        VisionTextDualEncoderModel,
        VisionTextDualEncoderConfig,
        pad_to_max_length=False,
    ),
}


def get_family(name: str) -> Family:
    if name not in FAMILIES:
        raise ValueError(f"unknown backbone family {name!r}; expected one of {sorted(FAMILIES)}")
    return FAMILIES[name]
