"""Baselines behind the same API: image-only, text-only, image+text sum, CLIP4Cir combiner.

All use the backbone's own image and text embeddings; targets are the plain image
embedding. Only the combiner has parameters of its own.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedTokenizerBase

from opencir.models.backbones import DualTower
from opencir.models.base import CIRModel
from opencir.models.config import ModelConfig


class BackboneBaseline(CIRModel):
    """Shared parts: one tower; targets are its normalised image embedding."""

    def __init__(self, config: ModelConfig, tower: DualTower, tokenizer: PreTrainedTokenizerBase):
        super().__init__(config, tokenizer)
        self.tower = tower

    @property
    def embed_dim(self) -> int:
        return self.tower.embed_dim

    def image_and_text(
        self, pixels: torch.Tensor, tokens: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        image = F.normalize(self.tower.encode_image(pixels), dim=-1)
        text = self.tower.encode_text(tokens["input_ids"], tokens["attention_mask"]).pooled
        return image, F.normalize(text, dim=-1)

    def forward_target(self, pixels: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.tower.encode_image(pixels), dim=-1)


class ImageOnly(BackboneBaseline):
    """Ignore the text: retrieve by the reference image alone."""

    def forward_query(self, pixels: torch.Tensor, tokens: dict[str, torch.Tensor]) -> torch.Tensor:
        return F.normalize(self.tower.encode_image(pixels), dim=-1)


class TextOnly(BackboneBaseline):
    """Ignore the reference image: retrieve by the modification text alone."""

    def forward_query(self, pixels: torch.Tensor, tokens: dict[str, torch.Tensor]) -> torch.Tensor:
        text = self.tower.encode_text(tokens["input_ids"], tokens["attention_mask"]).pooled
        return F.normalize(text, dim=-1)


class ImageTextSum(BackboneBaseline):
    """Sum of the normalised image and text embeddings, renormalised."""

    def forward_query(self, pixels: torch.Tensor, tokens: dict[str, torch.Tensor]) -> torch.Tensor:
        image, text = self.image_and_text(pixels, tokens)
        return F.normalize(image + text, dim=-1)


class Combiner(BackboneBaseline):
    """CLIP4Cir-style combiner: projected features, an MLP, and a learned gate λ.

    ``query = MLP([p_t; p_i]) + λ·t + (1 − λ)·i`` with ``λ = σ(gate([p_t; p_i]))``.
    """

    def __init__(self, config: ModelConfig, tower: DualTower, tokenizer: PreTrainedTokenizerBase):
        super().__init__(config, tower, tokenizer)
        dim, mult = tower.embed_dim, config.fusion.combiner_hidden_mult
        proj, hidden = mult * dim, 2 * mult * dim
        dropout = config.fusion.combiner_dropout
        self.text_proj = nn.Sequential(nn.Linear(dim, proj), nn.ReLU(), nn.Dropout(dropout))
        self.image_proj = nn.Sequential(nn.Linear(dim, proj), nn.ReLU(), nn.Dropout(dropout))
        self.mix = nn.Sequential(
            nn.Linear(2 * proj, hidden), nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden, dim)
        )
        self.gate = nn.Sequential(
            nn.Linear(2 * proj, hidden), nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden, 1)
        )

    def cir_trainable_parameters(self) -> list[nn.Parameter]:
        """The combiner head only; the backbone stays frozen (CLIP4Cir's combiner stage)."""
        heads = (self.text_proj, self.image_proj, self.mix, self.gate)
        return [p for head in heads for p in head.parameters()]

    def forward_query(self, pixels: torch.Tensor, tokens: dict[str, torch.Tensor]) -> torch.Tensor:
        image, text = self.image_and_text(pixels, tokens)
        joint = torch.cat([self.text_proj(text), self.image_proj(image)], dim=-1)
        weight = torch.sigmoid(self.gate(joint))
        return F.normalize(self.mix(joint) + weight * text + (1 - weight) * image, dim=-1)
