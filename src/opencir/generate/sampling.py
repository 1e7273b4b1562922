"""Pair sampling: random pairs, pairs within a class, and *related* pairs by nearest neighbours.

Every sampler is a deterministic stream of :class:`Pair` for a seed: the first N pairs of a
longer run are exactly the pairs of a shorter one, so growing ``--pairs`` reuses the shards
already written. No unordered pair comes out twice. ``random`` is the seed paper's sampler
(S1), ``class`` its Fashion200k variant (pairs within a meta-class) and ``related`` the
nearest-neighbour targets of S3, kept between a near-duplicate floor and a too-far ceiling.
"""

from __future__ import annotations

import bisect
import itertools
import logging
import random
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from opencir.data.collections import CollectionItem, get_field

log = logging.getLogger(__name__)

SAMPLERS = ("random", "class", "related")


@dataclass(frozen=True)
class Pair:
    """A reference and a target key; ``score`` is their similarity for related pairs."""

    reference: str
    target: str
    strategy: str
    score: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "reference": self.reference,
            "target": self.target,
            "strategy": self.strategy,
            "score": self.score,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Pair:
        return cls(data["reference"], data["target"], data["strategy"], data.get("score"))


@dataclass(frozen=True)
class SamplerConfig:
    """How to pick pairs.

    ``class_field``: metadata field (dotted) of the class for ``class`` sampling.
    ``k``: neighbours per image for ``related``; a neighbour is kept when its cosine distance
    ``1 - cos`` lies in ``[min_distance, max_distance]`` (below: near-duplicate; above: too far).
    ``embeddings``: an ``.npz`` with ``keys`` and ``vectors``; else ``embed_model`` (a model
    name or checkpoint folder) embeds the collection with ``encode_target``.
    """

    kind: str = "random"
    class_field: str = "class"
    k: int = 10
    min_distance: float = 0.02
    max_distance: float = 0.6
    embeddings: str | None = None
    embed_model: str | None = None
    embed_batch_size: int = 32

    def __post_init__(self) -> None:
        if self.kind not in SAMPLERS:
            raise ValueError(f"sampler must be one of {SAMPLERS}, got {self.kind!r}")
        if self.k < 1:
            raise ValueError(f"k must be >= 1, got {self.k}")
        if not 0.0 <= self.min_distance < self.max_distance <= 2.0:
            raise ValueError(
                "need 0 <= min_distance < max_distance <= 2 (cosine distances), got "
                f"{self.min_distance}, {self.max_distance}"
            )

    def provenance(self) -> dict[str, Any]:
        if self.kind == "random":
            return {"kind": "random"}
        if self.kind == "class":
            return {"kind": "class", "class_field": self.class_field}
        return {
            "kind": "related",
            "k": self.k,
            "min_distance": self.min_distance,
            "max_distance": self.max_distance,
            "embed_model": self.embed_model,
            "embeddings": self.embeddings,
        }


def _unordered_pairs(n: int, rng: random.Random) -> Iterator[tuple[int, int]]:
    """Random distinct index pairs, no unordered pair twice, until all are used."""
    total, seen = n * (n - 1) // 2, set()
    while len(seen) < total:
        i, j = rng.randrange(n), rng.randrange(n)
        if i == j or (min(i, j), max(i, j)) in seen:
            continue
        seen.add((min(i, j), max(i, j)))
        yield i, j


def random_pairs(keys: Sequence[str], seed: int) -> Iterator[Pair]:
    """Uniformly random pairs over the whole collection (seed 002 §II-A)."""
    rng = random.Random(f"random:{seed}")
    for i, j in _unordered_pairs(len(keys), rng):
        yield Pair(keys[i], keys[j], "random")


def class_pairs(items: Sequence[CollectionItem], field: str, seed: int) -> Iterator[Pair]:
    """Pairs within one class; classes drawn in proportion to how many pairs they hold."""
    groups: dict[str, list[str]] = {}
    for item in items:
        value = get_field(item.meta, field)
        if value not in (None, ""):
            groups.setdefault(str(value), []).append(item.key)
    unlabelled = len(items) - sum(len(g) for g in groups.values())
    if unlabelled:
        log.warning("%d images have no %r field and are left out of class pairs", unlabelled, field)
    names = sorted(n for n in groups if len(groups[n]) > 1)
    rng = random.Random(f"class:{seed}")
    streams = {n: _unordered_pairs(len(groups[n]), random.Random(f"{seed}:{n}")) for n in names}
    left = {n: len(groups[n]) * (len(groups[n]) - 1) // 2 for n in names}
    while names:
        cumulative = list(itertools.accumulate(left[n] for n in names))
        name = names[bisect.bisect_right(cumulative, rng.randrange(cumulative[-1]))]
        i, j = next(streams[name])
        left[name] -= 1
        if not left[name]:
            names.remove(name)
        yield Pair(groups[name][i], groups[name][j], f"class:{name}")


def neighbour_table(
    vectors: np.ndarray, k: int, min_distance: float, max_distance: float, block: int = 1024
) -> list[list[tuple[int, float]]]:
    """For each row, up to ``k`` nearest rows (cosine) inside the distance band, best first."""
    vectors = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    vectors = vectors / np.maximum(norms, 1e-12)
    table: list[list[tuple[int, float]]] = []
    for start in range(0, len(vectors), block):
        sims = vectors[start : start + block] @ vectors.T
        for row, scores in enumerate(sims):
            scores[start + row] = -np.inf
            distance = 1.0 - scores
            ok = np.flatnonzero((distance >= min_distance) & (distance <= max_distance))
            best = ok[np.argsort(-scores[ok], kind="stable")[:k]]
            table.append([(int(j), float(scores[j])) for j in best])
    return table


def related_pairs(
    keys: Sequence[str], vectors: np.ndarray, config: SamplerConfig, seed: int
) -> Iterator[Pair]:
    """Nearest-neighbour targets (S3): rounds over a shuffled reference order, one pair each."""
    if len(keys) != len(vectors):
        raise ValueError(f"got {len(keys)} keys but {len(vectors)} embedding vectors")
    table = neighbour_table(vectors, config.k, config.min_distance, config.max_distance)
    empty = sum(1 for row in table if not row)
    if empty:
        log.info("%d of %d images have no neighbour inside the distance band", empty, len(keys))
    rng = random.Random(f"related:{seed}")
    order = list(range(len(keys)))
    rng.shuffle(order)
    seen: set[tuple[int, int]] = set()
    remaining = {i: list(table[i]) for i in order if table[i]}
    while remaining:
        for i in [i for i in order if i in remaining]:
            candidates = [(j, s) for j, s in remaining[i] if (min(i, j), max(i, j)) not in seen]
            if not candidates:
                del remaining[i]
                continue
            j, score = candidates[rng.randrange(len(candidates))]
            remaining[i] = [c for c in candidates if c[0] != j]
            seen.add((min(i, j), max(i, j)))
            yield Pair(keys[i], keys[j], "related", round(score, 6))


def max_pairs(n: int) -> int:
    return n * (n - 1) // 2 if n > 1 else 0


def take_pairs(stream: Iterator[Pair], count: int, what: str) -> list[Pair]:
    """The first ``count`` pairs; a clear error when the collection cannot supply them."""
    pairs = list(itertools.islice(stream, count))
    if len(pairs) < count:
        raise ValueError(
            f"{what} can supply only {len(pairs)} distinct pairs, {count} were asked for: "
            "lower --pairs or widen the sampler (more images, a wider distance band, larger k)"
        )
    return pairs


def sample_pairs(
    items: Sequence[CollectionItem],
    count: int,
    config: SamplerConfig,
    seed: int,
    vectors: np.ndarray | None = None,
) -> list[Pair]:
    """``count`` pairs by ``config.kind``; ``related`` needs one embedding row per item."""
    if count < 1:
        raise ValueError(f"--pairs must be >= 1, got {count}")
    keys = [item.key for item in items]
    if config.kind == "random":
        if count > max_pairs(len(keys)):
            raise ValueError(
                f"{len(keys)} images give at most {max_pairs(len(keys))} distinct pairs, "
                f"{count} were asked for"
            )
        return take_pairs(random_pairs(keys, seed), count, "the collection")
    if config.kind == "class":
        return take_pairs(class_pairs(items, config.class_field, seed), count, "class sampling")
    if vectors is None:
        raise ValueError("the related sampler needs embeddings (an .npz or an embedding model)")
    try:
        return take_pairs(related_pairs(keys, vectors, config, seed), count, "related sampling")
    except ValueError as error:
        raise ValueError(f"{error}. {nearest_distance_summary(vectors)}") from None


def nearest_distance_summary(vectors: np.ndarray, block: int = 1024) -> str:
    """Percentiles of each image's nearest-neighbour cosine distance (to set the band)."""
    vectors = np.asarray(vectors, dtype=np.float32)
    vectors = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    nearest = []
    for start in range(0, len(vectors), block):
        sims = vectors[start : start + block] @ vectors.T
        sims[np.arange(len(sims)), np.arange(start, start + len(sims))] = -np.inf
        nearest.append(1.0 - sims.max(axis=1))
    values = np.concatenate(nearest) if nearest else np.zeros(0)
    if not len(values):
        return "No embeddings."
    low, mid, high = np.percentile(values, [5, 50, 95])
    return (
        f"Nearest-neighbour cosine distances here: 5% {low:.4f}, median {mid:.4f}, "
        f"95% {high:.4f}; set --min-distance/--max-distance around them"
    )
