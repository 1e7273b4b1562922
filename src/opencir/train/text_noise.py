"""Word dropout for the modification texts of training triplets.

A query said in words the model has never seen names its object or change only in part: an
unknown colour word, say, leaves the shape and the place. Dropping words of the training
texts at random teaches the query side to use what is left. The draw is a pure function of
the batch (its texts and the run's seed), so a resumed run sees the same texts as an
unbroken one, and the same triplet is cut differently in each batch it lands in.
"""

from __future__ import annotations

import random
import zlib
from collections.abc import Sequence


def batch_rng(texts: Sequence[str], seed: int) -> random.Random:
    """A generator seeded by the run's ``seed`` and the batch's texts, stable across runs."""
    digest = zlib.crc32("\x1f".join(texts).encode("utf-8"))
    return random.Random(f"{seed}-{digest}")


def drop_words(text: str, probability: float, rng: random.Random) -> str:
    """``text`` with each word left out with ``probability``; at least one word stays."""
    words = text.split()
    kept = [word for word in words if rng.random() >= probability]
    if not kept and words:
        kept = [rng.choice(words)]
    return " ".join(kept)


def drop_batch_words(texts: Sequence[str], probability: float, seed: int) -> list[str]:
    """Every text of one batch through :func:`drop_words` with the batch's generator."""
    if not probability:
        return list(texts)
    rng = batch_rng(texts, seed)
    return [drop_words(text, probability, rng) for text in texts]
