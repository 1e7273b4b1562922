"""Contrastive objectives, written once and shared by every stage."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def batch_contrastive_loss(
    queries: torch.Tensor, targets: torch.Tensor, temperature: float, offset: int = 0
) -> torch.Tensor:
    """Eq. 2 of InstructCIR: each query against every target in the (global) batch.

    ``queries`` are this rank's ``[B, D]`` normalised embeddings, ``targets`` the gathered
    ``[W·B, D]``; query ``i`` matches target ``offset + i``.
    """
    logits = queries @ targets.T / temperature
    labels = torch.arange(queries.shape[0], device=queries.device) + offset
    return F.cross_entropy(logits, labels)


# what an excluded pool entry scores: low enough that exp() gives 0, and finite, so no
# product with the scores (GradCache's surrogate, a logged value) becomes inf·0 = NaN
EXCLUDED_SCORE = -1.0e4


def pool_contrastive_loss(
    queries: torch.Tensor, positives: torch.Tensor, pool_scores: torch.Tensor, temperature: float
) -> torch.Tensor:
    """Eq. 2 with the whole training pool as candidates: each query's target against every
    pool image. ``pool_scores`` ``[B, N]`` are the queries' similarities to the pool with the
    query's own answers set to :data:`EXCLUDED_SCORE`; ``positives`` ``[B, D]`` the targets.
    """
    positive = (queries * positives).sum(-1, keepdim=True)
    logits = torch.cat([positive, pool_scores], dim=1) / temperature
    labels = torch.zeros(queries.shape[0], dtype=torch.long, device=queries.device)
    return F.cross_entropy(logits, labels)


def clip_loss(
    images: torch.Tensor,
    texts: torch.Tensor,
    all_images: torch.Tensor,
    all_texts: torch.Tensor,
    logit_scale: torch.Tensor,
    offset: int = 0,
) -> torch.Tensor:
    """Symmetric image↔text InfoNCE (the CLIP objective) with a learned logit scale."""
    scale = logit_scale.exp().clamp(max=100.0)
    labels = torch.arange(images.shape[0], device=images.device) + offset
    image_to_text = F.cross_entropy(scale * images @ all_texts.T, labels)
    text_to_image = F.cross_entropy(scale * texts @ all_images.T, labels)
    return (image_to_text + text_to_image) / 2
