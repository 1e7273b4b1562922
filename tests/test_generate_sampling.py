"""Pair sampling: deterministic by seed, no pair twice, class and related constraints."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from opencir.data.collections import CollectionItem
from opencir.generate.sampling import SamplerConfig, neighbour_table, sample_pairs


def _items(n: int, classes: int = 0) -> list[CollectionItem]:
    return [
        CollectionItem(f"k{i:03d}", {"class": f"c{i % classes}"} if classes else {})
        for i in range(n)
    ]


def _unordered(pairs) -> set[frozenset[str]]:
    return {frozenset((p.reference, p.target)) for p in pairs}


@settings(max_examples=40, deadline=None)
@given(n=st.integers(2, 30), fraction=st.floats(0.01, 1.0), seed=st.integers(0, 10**6))
def test_random_pairs_are_distinct_and_deterministic(n: int, fraction: float, seed: int) -> None:
    count = max(1, int(fraction * n * (n - 1) / 2))
    config = SamplerConfig()
    pairs = sample_pairs(_items(n), count, config, seed)
    assert len(pairs) == count == len(_unordered(pairs))
    assert all(p.reference != p.target and p.strategy == "random" for p in pairs)
    assert pairs == sample_pairs(_items(n), count, config, seed)
    assert (
        pairs[: count // 2] == sample_pairs(_items(n), count // 2 or 1, config, seed)[: count // 2]
    )


def test_seed_changes_pairs_and_too_many_is_an_error() -> None:
    a = sample_pairs(_items(50), 20, SamplerConfig(), 1)
    b = sample_pairs(_items(50), 20, SamplerConfig(), 2)
    assert a != b
    with pytest.raises(ValueError, match="at most 6 distinct pairs"):
        sample_pairs(_items(4), 7, SamplerConfig(), 0)
    with pytest.raises(ValueError, match="--pairs must be >= 1"):
        sample_pairs(_items(4), 0, SamplerConfig(), 0)


def test_class_pairs_stay_inside_a_class() -> None:
    items = [*_items(30, classes=3), CollectionItem("unlabelled", {})]
    meta = {item.key: item.meta.get("class") for item in items}
    config = SamplerConfig(kind="class")
    pairs = sample_pairs(items, 100, config, seed=3)
    assert len(_unordered(pairs)) == 100
    for pair in pairs:
        assert meta[pair.reference] == meta[pair.target]
        assert pair.strategy == f"class:{meta[pair.reference]}"
    assert {p.strategy for p in pairs} == {"class:c0", "class:c1", "class:c2"}
    assert pairs == sample_pairs(items, 100, config, seed=3)
    with pytest.raises(ValueError, match="class sampling can supply only 135"):
        sample_pairs(items, 136, config, seed=3)


def test_class_field_can_be_nested() -> None:
    items = [CollectionItem(f"k{i}", {"attributes": {"group": "ab"[i % 2]}}) for i in range(6)]
    pairs = sample_pairs(items, 6, SamplerConfig(kind="class", class_field="attributes.group"), 0)
    assert {p.strategy for p in pairs} == {"class:a", "class:b"}


def test_neighbour_table_respects_the_band() -> None:
    vectors = np.array([[1.0, 0.0], [1.0, 0.001], [0.9, 0.44], [0.0, 1.0], [-1.0, 0.0]])
    table = neighbour_table(vectors, k=5, min_distance=0.01, max_distance=0.5)
    # 1 is a near-duplicate of 0 (floor), 3 and 4 are too far (ceiling)
    assert [j for j, _ in table[0]] == [2]
    assert all(0.5 <= s <= 0.99 for row in table for _, s in row)


def test_related_pairs_are_neighbours_within_the_band() -> None:
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(4, 16))
    vectors = np.concatenate([c + 0.3 * rng.normal(size=(10, 16)) for c in centres])
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    items = _items(40)
    config = SamplerConfig(kind="related", k=4, min_distance=0.01, max_distance=0.8)
    pairs = sample_pairs(items, 60, config, seed=0, vectors=vectors)
    assert len(_unordered(pairs)) == 60
    index = {item.key: i for i, item in enumerate(items)}
    for pair in pairs:
        i, j = index[pair.reference], index[pair.target]
        sim = float(vectors[i] @ vectors[j])
        assert 0.01 <= 1 - sim <= 0.8
        assert i // 10 == j // 10  # neighbours come from the same cluster
        assert pair.strategy == "related" and pair.score == pytest.approx(sim, abs=1e-5)
    assert pairs == sample_pairs(items, 60, config, seed=0, vectors=vectors)
    with pytest.raises(ValueError, match="needs embeddings"):
        sample_pairs(items, 5, config, seed=0)
    with pytest.raises(ValueError, match="related sampling can supply only"):
        sample_pairs(items, 1000, config, seed=0, vectors=vectors)


def test_sampler_config_checks_its_band() -> None:
    with pytest.raises(ValueError, match="min_distance < max_distance"):
        SamplerConfig(kind="related", min_distance=0.5, max_distance=0.4)
    with pytest.raises(ValueError, match="sampler must be one of"):
        SamplerConfig(kind="nearest")
