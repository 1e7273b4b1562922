"""Candidate embeddings computed once, when the target encoder cannot change during training.

In S1 training every batch sends its targets, its references (``reference_negatives``) and
its mined hard negatives (``hard_negatives``) through the target encoder — with 4 hard
negatives, six images per triplet against the query side's one. When that encoder is fixed
(an InstructCIR model with ``ema_momentum: 1``: the target stays the model training started
from) those embeddings are the same at every step, so they are computed once, before the
first step, for every distinct image of the training triplets, and a batch then carries only
each candidate's row in that table: its target and negative images are neither loaded nor
encoded. The table is built with the model in eval mode, as the hard-negative miner embeds
(the miner then reads its embeddings from the same table).

``cache_fixed_targets: false`` in a recipe turns the table off (every batch encodes its
candidates again, as an EMA target requires).

With the table at hand, ``pool_negatives: true`` makes every training image a candidate for
every query (a softmax over the whole pool, :func:`opencir.train.losses.pool_contrastive_loss`)
instead of the batch's targets, references and mined negatives: each query's target is then
contrasted with every near-miss the training set holds, at the cost of one ``[B, N]`` matrix
product per step. The query's other right answers are never its negatives, nor its reference
unless ``reference_negatives`` is on.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from opencir.train.data import TripletDataset
from opencir.train.negatives import KeyEmbedder

# batch fields holding image pixels → the fields holding their rows in the table instead
ROW_FIELDS = {"reference": "reference_rows", "target": "target_rows", "negatives": "negative_rows"}


def build_candidate_table(
    parts: Sequence[TripletDataset], embedder: Callable[[TripletDataset], KeyEmbedder]
) -> torch.Tensor:
    """Embed every distinct image key of each part once (references, targets and any
    negatives already attached; mined negatives are references or targets), as ``[N, D]`` rows.

    Each part's keys get rows of their own (two parts may use the same key for different
    images), recorded in ``part.candidate_rows``; from then on the part's examples carry rows
    for their target, reference and negatives instead of their pixels, and the rows of every
    answer of their query (``part.answer_rows``: triplets with the same reference and text
    are one query with several right answers), which ``pool_negatives`` keeps out of the
    query's negatives.
    """
    tables, offset = [], 0
    for part in parts:
        keys = sorted({key for t in part.triplets for key in (t.reference, t.target, *t.negatives)})
        tables.append(embedder(part)(keys))
        rows = {key: offset + i for i, key in enumerate(keys)}
        answers: dict[tuple[str, str], list[int]] = {}
        for t in part.triplets:
            answers.setdefault((t.reference, t.text), []).append(rows[t.target])
        part.candidate_rows = rows
        part.answer_rows = {query: tuple(found) for query, found in answers.items()}
        offset += len(keys)
    return torch.cat(tables)


def table_embedder(table: torch.Tensor) -> Callable[[TripletDataset], KeyEmbedder]:
    """A key embedder per part that reads the rows of ``table`` (for the hard-negative miner)."""

    def for_part(part: TripletDataset) -> KeyEmbedder:
        rows = part.candidate_rows or {}
        return lambda keys: table[torch.tensor([rows[key] for key in keys])]

    return for_part
