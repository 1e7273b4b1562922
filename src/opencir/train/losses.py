"""Contrastive objectives, written once and shared by every stage."""

from __future__ import annotations

import math

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


def region_weights(patch_count: int, boxes: torch.Tensor) -> torch.Tensor:
    """``[R, N]`` weights averaging the patches of each box, over a square grid of
    ``patch_count`` patches (row-major); ``boxes`` ``[R, 4]`` are ``(x0, y0, x1, y1)``
    fractions of the image. A patch counts when its centre lies in the box; a box holding no
    patch centre takes the patch under its own centre."""
    grid = math.isqrt(patch_count)
    if grid * grid != patch_count:
        raise ValueError(f"{patch_count} patch tokens do not form a square grid")
    centres = (torch.arange(grid, device=boxes.device, dtype=boxes.dtype) + 0.5) / grid
    cy, cx = (c.reshape(-1) for c in torch.meshgrid(centres, centres, indexing="ij"))
    x0, y0, x1, y1 = (boxes[:, i : i + 1] for i in range(4))
    inside = (cx >= x0) & (cx < x1) & (cy >= y0) & (cy < y1)
    centre_x = ((x0 + x1) / 2 * grid).long().clamp(max=grid - 1)
    centre_y = ((y0 + y1) / 2 * grid).long().clamp(max=grid - 1)
    inside.scatter_(1, centre_y * grid + centre_x, True)
    return inside.to(boxes.dtype) / inside.sum(1, keepdim=True)


def region_embeddings(
    patches: torch.Tensor, boxes: torch.Tensor, images: torch.Tensor
) -> torch.Tensor:
    """Normalised mean patch embedding inside each box ``[R, D]`` (:func:`region_weights`):
    ``patches`` ``[B, N, D]``, ``images`` ``[R]`` the image of each box."""
    weights = region_weights(patches.shape[1], boxes).to(patches.dtype)
    pooled = torch.einsum("rn,rnd->rd", weights, patches[images])
    return F.normalize(pooled, dim=-1)


def region_caption_loss(
    regions: torch.Tensor,
    captions: torch.Tensor,
    caption_ids: torch.Tensor,
    logit_scale: torch.Tensor,
) -> torch.Tensor:
    """Each region ``[R, D]`` classified among the batch's distinct captions ``[U, D]`` (both
    normalised); ``caption_ids`` ``[R]`` is the row of its own caption."""
    scale = logit_scale.exp().clamp(max=100.0)
    return F.cross_entropy(scale * regions @ captions.T, caption_ids)


def clip_loss(
    images: torch.Tensor,
    texts: torch.Tensor,
    all_images: torch.Tensor,
    all_texts: torch.Tensor,
    logit_scale: torch.Tensor,
    offset: int = 0,
    negative_texts: torch.Tensor | None = None,
) -> torch.Tensor:
    """Symmetric image↔text InfoNCE (the CLIP objective) with a learned logit scale.

    ``negative_texts`` ``[M, D]`` are captions no image matches (hard negative captions, as
    in NegCLIP): extra candidates of every image's image→text softmax, none in text→image.
    """
    scale = logit_scale.exp().clamp(max=100.0)
    labels = torch.arange(images.shape[0], device=images.device) + offset
    candidates = all_texts if negative_texts is None else torch.cat([all_texts, negative_texts])
    image_to_text = F.cross_entropy(scale * images @ candidates.T, labels)
    text_to_image = F.cross_entropy(scale * texts @ all_images.T, labels)
    return (image_to_text + text_to_image) / 2
