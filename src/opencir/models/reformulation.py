"""S1 — InstructCIR's embedding reformulation network (seed 002, §II-B/II-C).

Reads top to bottom: the cross-attention block, the predictor, the reformulation encoder
(a ViT whose every block is self-attention → cross-attention to text → MLP, optionally
followed by extra blocks that start as the identity), and the model that pairs a query
encoder with an EMA target encoder and an optional Eq. 3 combiner.
"""

from __future__ import annotations

import copy
import dataclasses

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint
from transformers import PreTrainedTokenizerBase

from opencir.models.backbones import (
    DualTower,
    TextFeatures,
    feed_forward,
    linear,
    multi_head_attention,
    self_attention,
)
from opencir.models.base import CIRModel
from opencir.models.config import ModelConfig


class CrossAttention(nn.Module):
    """Image tokens (queries) attend to the text encoder's token sequence (keys/values).

    Pre-norm with a residual, the backbone's head count and Xavier initialisation, as the
    paper states. Keys/values are projected from the text width to the vision width. With
    ``zero_out`` the output projection starts at zero: the block is then the identity until
    training moves it, and the pretrained image features pass through unchanged.
    """

    def __init__(
        self, vision_width: int, text_width: int, num_heads: int, zero_out: bool = False
    ) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.norm = nn.LayerNorm(vision_width)
        self.q_proj = nn.Linear(vision_width, vision_width)
        self.k_proj = nn.Linear(text_width, vision_width)
        self.v_proj = nn.Linear(text_width, vision_width)
        self.out_proj = nn.Linear(vision_width, vision_width)
        for proj in (self.q_proj, self.k_proj, self.v_proj, self.out_proj):
            nn.init.xavier_uniform_(proj.weight)
            nn.init.zeros_(proj.bias)
        if zero_out:
            nn.init.zeros_(self.out_proj.weight)

    def forward(self, x: torch.Tensor, text: TextFeatures) -> torch.Tensor:
        """``text`` may hold one sequence for the whole batch (the null text of the target path):
        its keys/values are then projected once and broadcast, not once per image."""
        q = linear(self.q_proj, self.norm(x))
        k, v = linear(self.k_proj, text.tokens), linear(self.v_proj, text.tokens)
        mask = text.mask
        if k.shape[0] != x.shape[0]:
            k, v = k.expand(x.shape[0], -1, -1), v.expand(x.shape[0], -1, -1)
            mask = None if mask is None else mask.expand(x.shape[0], -1)
        out = multi_head_attention(q, k, v, self.num_heads, key_mask=mask)
        return x + linear(self.out_proj, out)


class Predictor(nn.Module):
    """MLP over ``[image embedding; text embedding]`` giving the retrieval embedding (Eq. 1).

    Both inputs are L2-normalised first so neither modality dominates by scale. With
    ``residual`` the MLP output is added to the image embedding and its last layer starts at
    zero, so training starts from the backbone's own image space instead of a random one
    (useful when triplets are few; off by default, as in the paper).
    """

    def __init__(self, embed_dim: int, hidden_mult: int, residual: bool = False) -> None:
        super().__init__()
        hidden = hidden_mult * embed_dim
        self.residual = residual
        self.net = nn.Sequential(
            nn.Linear(2 * embed_dim, hidden), nn.GELU(), nn.Linear(hidden, embed_dim)
        )
        if residual:
            nn.init.zeros_(self.net[-1].weight)
            nn.init.zeros_(self.net[-1].bias)

    def forward(self, image: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        image = F.normalize(image, dim=-1)
        out = self.net(torch.cat([image, F.normalize(text, dim=-1)], -1))
        return image + out if self.residual else out


def identity_block(layer: nn.Module) -> nn.Module:
    """A copy of a pre-norm ViT block whose residual branches start at zero.

    The attention output projection and the MLP's last linear are zeroed, so the copy maps
    every token sequence to itself until training moves them; its other weights (queries,
    keys, values, the MLP's first linear, the norms) start as the source block's.
    """
    block = copy.deepcopy(layer)
    for last in (block.self_attn.out_proj, block.mlp.fc2):
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)
    return block


class ReformulationEncoder(nn.Module):
    """E(I, T(t)) followed by the predictor: one full encoder (query or EMA target).

    ``extra_blocks`` appends that many blocks after the backbone's own (copies of its last
    block that start as the identity, each with its own cross-attention): more depth in
    which image tokens can act on what the text names, without changing what an untrained
    model computes.
    """

    def __init__(
        self,
        tower: DualTower,
        cross_attention: bool,
        predictor_hidden_mult: int,
        predictor_residual: bool = False,
        cross_attention_zero_init: bool = False,
        extra_blocks: int = 0,
    ) -> None:
        super().__init__()
        self.tower = tower
        extra_blocks = extra_blocks if cross_attention else 0  # FusionConfig rejects the mix
        self.extra_layers = nn.ModuleList(
            identity_block(tower.vision_layers[-1]) for _ in range(extra_blocks)
        )
        blocks = len(tower.vision_layers) + extra_blocks
        self.cross = (
            nn.ModuleList(
                CrossAttention(
                    tower.vision_width,
                    tower.text_width,
                    tower.vision_heads,
                    zero_out=cross_attention_zero_init,
                )
                for _ in range(blocks)
            )
            if cross_attention
            else None
        )
        self.predictor = Predictor(tower.embed_dim, predictor_hidden_mult, predictor_residual)
        self.use_checkpointing = False

    def reformulate(self, pixels: torch.Tensor, text: TextFeatures) -> torch.Tensor:
        """Text-guided image embedding before the predictor (the plain one without cross-attn)."""
        tower = self.tower
        if self.cross is None:
            return tower.encode_image(pixels)
        x = tower.vision_tokens(pixels)
        for index in range(len(self.cross)):
            if self.use_checkpointing and self.training:
                x = checkpoint(self._block, index, x, text, use_reentrant=False)
            else:
                x = self._block(index, x, text)
        return tower.pool_image(x)

    def _block(self, index: int, x: torch.Tensor, text: TextFeatures) -> torch.Tensor:
        """One reformulation block: self-attention → cross-attention to text → MLP."""
        own = len(self.tower.vision_layers)
        layer = self.tower.vision_layers[index] if index < own else self.extra_layers[index - own]
        x = self_attention(layer, x, self.tower.vision_heads)
        x = self.cross[index](x, text)
        return feed_forward(layer, x)

    def forward(
        self, pixels: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Return ``(predicted embedding, pooled text embedding)``, both unnormalised."""
        text = self.tower.encode_text(input_ids, attention_mask)  # once, shared by all blocks
        return self.encode(pixels, text), text.pooled

    def encode(self, pixels: torch.Tensor, text: TextFeatures) -> torch.Tensor:
        """Predicted embedding for already encoded text (one text per image, or one for all)."""
        image = self.reformulate(pixels, text)
        pooled = text.pooled
        if pooled.shape[0] != pixels.shape[0]:  # a single text (the null text) for the batch
            pooled = pooled.expand(pixels.shape[0], -1)
        return self.predictor(image, pooled)


def _weights_key(tower: DualTower, inference: bool) -> tuple:
    """Changes whenever any weight of ``tower`` is modified in place or replaced."""
    state = tuple((p.data_ptr(), p._version, p.dtype) for p in tower.parameters())
    return (inference, torch.is_autocast_enabled(), state)


class InstructCIR(CIRModel):
    """Query encoder + EMA target encoder (+ optional combiner) behind the CIRModel API."""

    def __init__(self, config: ModelConfig, tower: DualTower, tokenizer: PreTrainedTokenizerBase):
        super().__init__(config, tokenizer)
        fusion = config.fusion
        self.query_encoder = ReformulationEncoder(
            tower,
            fusion.cross_attention,
            fusion.predictor_hidden_mult,
            fusion.predictor_residual,
            fusion.cross_attention_zero_init,
            fusion.extra_blocks,
        )
        self.target_encoder: ReformulationEncoder | None = None
        if fusion.ema:
            self.target_encoder = copy.deepcopy(self.query_encoder).requires_grad_(False)
        self.combiner_logit = None
        if fusion.combiner:
            init = torch.logit(torch.tensor(fusion.combiner_init))
            self.combiner_logit = nn.Parameter(init.reshape(1))
        self._null_cache: dict[int, tuple[tuple, TextFeatures]] = {}

    @property
    def embed_dim(self) -> int:
        return self.query_encoder.tower.embed_dim

    @property
    def target_network(self) -> ReformulationEncoder:
        """The encoder targets go through: the EMA copy, or the query encoder without EMA."""
        return self.target_encoder if self.target_encoder is not None else self.query_encoder

    @property
    def has_fixed_target(self) -> bool:
        """Targets go through an encoder training never changes (an EMA copy with momentum 1)."""
        return self.target_encoder is not None and self.config.fusion.ema_momentum == 1.0

    @property
    def combiner_weight(self) -> torch.Tensor | None:
        """λ of Eq. 3, the weight of the pure text embedding in the final query."""
        return None if self.combiner_logit is None else torch.sigmoid(self.combiner_logit)

    def forward_query(self, pixels: torch.Tensor, tokens: dict[str, torch.Tensor]) -> torch.Tensor:
        query, text = self.query_encoder(pixels, tokens["input_ids"], tokens["attention_mask"])
        query = F.normalize(query, dim=-1)
        weight = self.combiner_weight
        if weight is not None:  # Eq. 3: q = (1 - λ)·q̂ + λ·t̂, then renormalise
            query = (1 - weight) * query + weight * F.normalize(text, dim=-1)
        return F.normalize(query, dim=-1)

    def forward_target(self, pixels: torch.Tensor) -> torch.Tensor:
        encoder = self.target_network
        return F.normalize(encoder.encode(pixels, self._null_text(encoder)), dim=-1)

    def _null_text(self, encoder: ReformulationEncoder) -> TextFeatures:
        """The null text through ``encoder``'s text tower, computed once per set of weights.

        Without autograd the features are reused until a text weight changes (an optimizer
        or EMA step, ``load_state_dict`` and ``.to()`` all change a weight's version counter
        or storage), so a gallery is encoded without re-running the text encoder per batch.
        """
        if torch.is_grad_enabled():
            return self._encode_null_text(encoder)
        key = _weights_key(encoder.tower, torch.is_inference_mode_enabled())
        cached = self._null_cache.get(id(encoder))
        if cached is None or cached[0] != key:
            cached = (key, self._encode_null_text(encoder))
            self._null_cache[id(encoder)] = cached
        return cached[1]

    def _encode_null_text(self, encoder: ReformulationEncoder) -> TextFeatures:
        null = self.tokenize([self.config.fusion.null_text])
        return encoder.tower.encode_text(null["input_ids"], null["attention_mask"])

    @torch.no_grad()
    def ema_update(self, momentum: float | None = None) -> None:
        """target ← m·target + (1 − m)·query, one fused foreach ``lerp`` over all tensors.

        ``lerp`` reads each pair once and writes the target once (a multiply then an add
        would pass over the target twice): the EMA is memory-bound, so this halves its cost.
        """
        m = self.config.fusion.ema_momentum if momentum is None else momentum
        if self.target_encoder is None or m == 1.0:  # no target, or a fixed one
            return
        # Frozen query weights never change, so their copies are left exactly as they are
        # (m·x + (1 − m)·x is not always x in floating point).
        pairs = [
            (t, q.detach())
            for t, q in zip(
                self.target_encoder.parameters(), self.query_encoder.parameters(), strict=True
            )
            if q.requires_grad
        ]
        if not pairs:
            return
        target, online = (list(side) for side in zip(*pairs, strict=True))
        torch._foreach_lerp_(target, online, 1.0 - m)

    def cir_trainable_parameters(self) -> list[nn.Parameter]:
        """Both the text encoder and the reformulated image encoder are trained (§II-C).

        The backbone's logit scale (and any weight no embedding uses) is left out: a parameter
        that never receives a gradient would stall DDP's gradient buckets.
        """
        tower = self.query_encoder.tower
        unused = {id(p) for p in (*tower.logit_parameters(), *tower.unused_parameters())}
        return [p for p in self.query_encoder.parameters() if id(p) not in unused]

    def enable_combiner(self, init: float | None = None) -> None:
        """Add the Eq. 3 combiner to a model trained without it (the combiner stage)."""
        if self.combiner_logit is not None:
            return
        fusion = dataclasses.replace(self.config.fusion, combiner=True)
        if init is not None:
            fusion = dataclasses.replace(fusion, combiner_init=init)
        self.config = dataclasses.replace(self.config, fusion=fusion)
        logit = torch.logit(torch.tensor(fusion.combiner_init)).reshape(1).to(self.device)
        self.combiner_logit = nn.Parameter(logit)

    def combiner_parameters(self) -> list[nn.Parameter]:
        """What the combiner stage trains (everything else frozen)."""
        if self.combiner_logit is None:
            raise ValueError("this model was built without a combiner (fusion.combiner=False)")
        return [self.combiner_logit]
