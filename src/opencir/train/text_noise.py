"""Noise for the modification texts of training triplets: word dropout and synonym swaps.

A query said in words the model has never seen names its object or change only in part: an
unknown colour word, say, leaves the shape and the place. Dropping words of the training
texts at random teaches the query side to use what is left. Swapping a word for one of its
synonyms from a table (``{"red": ["carmine", "rouge", ...]}``) teaches it that a change may
name a colour in many words, so it leans on what the text tower knows of a word rather than
on the few the training texts use; an empty synonym (``{"red": [""]}``) leaves the word out,
so the query side must find the object by what else the text says of it. Each draw is a
pure function of the batch (its texts and the run's seed), so a resumed run sees the same
texts as an unbroken one, and the same triplet is reworded afresh in each batch it lands in.
"""

from __future__ import annotations

import functools
import json
import random
import re
import zlib
from collections.abc import Mapping, Sequence
from pathlib import Path

SynonymTable = Mapping[str, Sequence[str]]


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


@functools.cache
def _word_pattern(keys: tuple[str, ...]) -> re.Pattern:
    longest_first = sorted(keys, key=len, reverse=True)  # "light blue" before "blue"
    alternatives = "|".join(map(re.escape, longest_first))
    # a whole word: "red" in "the red star", not in "centred" or "cherry-red"
    return re.compile(rf"(?<![\w-])({alternatives})(?![\w-])", re.IGNORECASE)


def load_synonyms(path: str | Path) -> dict[str, tuple[str, ...]]:
    """A synonym table from a JSON object of word → list of replacement words."""
    try:
        table = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"data.synonyms: cannot read {path}: {err}") from err
    if not isinstance(table, dict) or not all(
        isinstance(words, list) and words and all(isinstance(w, str) for w in words)
        for words in table.values()
    ):
        raise ValueError(
            f"data.synonyms: {path} must hold a JSON object of word -> non-empty list of strings"
        )
    return {key.lower(): tuple(words) for key, words in table.items()}


def swap_synonyms(text: str, table: SynonymTable, rate: float, rng: random.Random) -> str:
    """``text`` with each whole-word occurrence of a key of ``table`` (any case) replaced,
    with probability ``rate``, by one of its synonyms; an empty synonym leaves the word out
    ("remove the red star" → "remove the star")."""
    if not table or not rate:
        return text

    def replace(match: re.Match) -> str:
        word = match.group(0)
        return rng.choice(table[word.lower()]) if rng.random() < rate else word

    swapped = _word_pattern(tuple(table)).sub(replace, text)
    return " ".join(swapped.split()) if swapped != text else text


def noise_batch_texts(
    texts: Sequence[str],
    seed: int,
    word_dropout: float = 0.0,
    synonyms: SynonymTable | None = None,
    synonym_rate: float = 0.0,
) -> list[str]:
    """One batch's texts with synonyms swapped, then words dropped, from the batch's
    generator (the texts as given when neither applies)."""
    if not word_dropout and not (synonyms and synonym_rate):
        return list(texts)
    rng = batch_rng(texts, seed)
    out = [swap_synonyms(text, synonyms or {}, synonym_rate, rng) for text in texts]
    return [drop_words(text, word_dropout, rng) if word_dropout else text for text in out]
