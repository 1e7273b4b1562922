"""The metric core against brute-force numpy re-implementations.

Embeddings are small dyadic numbers (integers / 4), so every dot product is exact in
float32 and float64 alike: chunked torch scores and numpy scores agree bit for bit, and
quantised values force many exact ties.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from opencir.eval.metrics import (
    map_at_k,
    rank_gallery,
    recall_at_k,
    recall_hits_at_k,
    recall_subset_at_k,
)

# ----------------------------------------------------------------------------- brute force


def brute_rank(q, g, k, exclude=None, candidates=None):
    """Full stable sort: score descending, then gallery index ascending; pad -1 / -inf."""
    scores = q.astype(np.float64) @ g.astype(np.float64).T
    ids = np.full((len(q), k), -1, dtype=np.int64)
    top_scores = np.full((len(q), k), -np.inf)
    for i in range(len(q)):
        allowed = np.ones(len(g), dtype=bool)
        if candidates is not None:
            allowed[:] = False
            allowed[list(candidates[i])] = True
        if exclude is not None:
            allowed[list(exclude[i])] = False
        idx = np.nonzero(allowed)[0]
        order = idx[np.lexsort((idx, -scores[i, idx]))][:k]
        ids[i, : len(order)] = order
        top_scores[i, : len(order)] = scores[i, order]
    return ids, top_scores


def brute_recall(ranks, targets, k):
    return 100.0 * np.mean(
        [any(j in set(t) for j in row[:k]) for row, t in zip(ranks, targets, strict=True)]
    )


def brute_map(ranks, targets, k):
    aps = []
    for row, t in zip(ranks, targets, strict=True):
        gt, hits, total = set(t), 0, 0.0
        for i, j in enumerate(row[:k]):
            if j in gt:
                hits += 1
                total += hits / (i + 1)
        aps.append(total / min(len(gt), k))
    return 100.0 * np.mean(aps)


def quantised(rng, n, d, levels):
    return (rng.integers(-levels, levels + 1, size=(n, d)) / 4.0).astype(np.float32)


def random_lists(rng, n_queries, n_gallery, max_len, shared):
    lists = [
        rng.choice(n_gallery, size=rng.integers(0, min(max_len, n_gallery) + 1), replace=False)
        for _ in range(n_queries)
    ]
    if shared and n_queries > 1:  # several queries with one list: the grouped path
        for i in range(1, n_queries, 2):
            lists[i] = lists[0]
    return [sorted(int(j) for j in lst) for lst in lists]


def check_rank(q, g, k, exclude=None, candidates=None, **chunks):
    ids, scores = rank_gallery(
        torch.from_numpy(q), torch.from_numpy(g), k, exclude, candidates, **chunks
    )
    want_ids, want_scores = brute_rank(q, g, k, exclude, candidates)
    np.testing.assert_array_equal(ids.numpy(), want_ids)
    np.testing.assert_array_equal(scores.numpy().astype(np.float64), want_scores)
    return ids.numpy()


# ----------------------------------------------------------------------------- ranking


@settings(max_examples=150, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    n_q=st.integers(1, 30),
    n_g=st.integers(1, 50),
    dim=st.integers(1, 6),
    k=st.integers(1, 60),
    levels=st.sampled_from([0, 1, 2, 400]),
    chunk=st.integers(1, 40),
    gallery_chunk=st.integers(1, 60),
    use_exclude=st.booleans(),
)
def test_rank_gallery_matches_brute_force(
    seed, n_q, n_g, dim, k, levels, chunk, gallery_chunk, use_exclude
):
    rng = np.random.default_rng(seed)
    q, g = quantised(rng, n_q, dim, levels), quantised(rng, n_g, dim, levels)
    exclude = random_lists(rng, n_q, n_g, 3, shared=False) if use_exclude else None
    check_rank(q, g, k, exclude, chunk_size=chunk, gallery_chunk_size=gallery_chunk)


@settings(max_examples=150, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    n_q=st.integers(1, 30),
    n_g=st.integers(1, 50),
    dim=st.integers(1, 6),
    k=st.integers(1, 20),
    levels=st.sampled_from([0, 1, 2, 400]),
    chunk=st.integers(1, 40),
    gallery_chunk=st.integers(1, 60),
    shared=st.booleans(),
    use_exclude=st.booleans(),
)
def test_rank_within_candidates_matches_brute_force(
    seed, n_q, n_g, dim, k, levels, chunk, gallery_chunk, shared, use_exclude
):
    rng = np.random.default_rng(seed)
    q, g = quantised(rng, n_q, dim, levels), quantised(rng, n_g, dim, levels)
    candidates = random_lists(rng, n_q, n_g, 15, shared)
    exclude = random_lists(rng, n_q, n_g, 3, shared=False) if use_exclude else None
    ids = check_rank(
        q, g, k, exclude, candidates, chunk_size=chunk, gallery_chunk_size=gallery_chunk
    )
    for row, cand in zip(ids, candidates, strict=True):
        assert set(row[row >= 0]) <= set(cand)


@pytest.mark.parametrize("candidates", [False, True])
def test_chunked_equals_unchunked_with_heavy_ties(candidates):
    rng = np.random.default_rng(0)
    q, g = quantised(rng, 200, 3, 1), quantised(rng, 500, 3, 1)
    cand = random_lists(rng, 200, 500, 60, shared=True) if candidates else None
    exclude = [[i % 500] for i in range(200)]
    args = (torch.from_numpy(q), torch.from_numpy(g), 25, exclude, cand)
    whole = rank_gallery(*args, chunk_size=10_000, gallery_chunk_size=10_000)
    chunked = rank_gallery(*args, chunk_size=7, gallery_chunk_size=13)
    assert torch.equal(whole[0], chunked[0]) and torch.equal(whole[1], chunked[1])


def test_ties_go_to_lower_gallery_index():
    q, g = torch.ones(2, 4), torch.zeros(6, 4)
    ids, scores = rank_gallery(q, g, 4, exclude=[[0], [2, 3]], gallery_chunk_size=2)
    assert ids.tolist() == [[1, 2, 3, 4], [0, 1, 4, 5]]
    assert torch.all(scores == 0)


def test_k_beyond_gallery_pads_with_minus_one_and_neg_inf():
    ids, scores = rank_gallery(torch.eye(2), torch.eye(2)[[1, 0, 1]], 5, exclude=[[0], []])
    assert ids.tolist() == [[1, 2, -1, -1, -1], [0, 2, 1, -1, -1]]
    assert torch.isinf(scores[:, 3:]).all() and (scores[:, 3:] < 0).all()
    ids, _ = rank_gallery(torch.eye(2), torch.eye(2), 3, candidates=[[], [0]])
    assert ids.tolist() == [[-1, -1, -1], [0, -1, -1]]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"queries": torch.ones(3)}, "queries must be a 2-D"),
        ({"gallery": torch.ones(4, 5)}, "embedding size"),
        ({"k": 0}, "k must be a positive integer"),
        ({"chunk_size": 0}, "chunk_size must be"),
        ({"exclude": [[0]]}, "exclude must have one entry per query"),
        ({"exclude": [[0], [9]]}, r"exclude\[1\] holds gallery index 9"),
        ({"candidates": [[-1], [0]]}, r"candidates\[0\] holds gallery index -1"),
        ({"queries": torch.tensor([[float("nan"), 0, 0]] * 2)}, "NaN or inf"),
    ],
)
def test_rank_gallery_rejects_bad_input(kwargs, match):
    args = {"queries": torch.ones(2, 3), "gallery": torch.ones(4, 3), "k": 2} | kwargs
    with pytest.raises(ValueError, match=match):
        rank_gallery(**args)


# ----------------------------------------------------------------------------- metrics


def random_targets(rng, n_q, n_g, max_gt):
    return [
        set(rng.choice(n_g, size=rng.integers(1, min(max_gt, n_g) + 1), replace=False).tolist())
        for _ in range(n_q)
    ]


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    n_q=st.integers(1, 25),
    n_g=st.integers(1, 40),
    max_gt=st.integers(1, 6),
    levels=st.sampled_from([1, 400]),
)
def test_recall_and_map_match_brute_force(seed, n_q, n_g, max_gt, levels):
    rng = np.random.default_rng(seed)
    q, g = quantised(rng, n_q, 4, levels), quantised(rng, n_g, 4, levels)
    targets = random_targets(rng, n_q, n_g, max_gt)
    ks = [1, 2, 5, 10, 25, 50]
    ranks, _ = brute_rank(q, g, 50)
    recall, mean_ap = recall_at_k(ranks, targets, ks), map_at_k(ranks, targets, ks)
    for k in ks:
        assert recall[k] == pytest.approx(brute_recall(ranks, targets, k))
        assert mean_ap[k] == pytest.approx(brute_map(ranks, targets, k))


def test_map_known_value():
    ranks = [[3, 1, 2, 0], [5, 6, 7, 8]]
    targets = [{1, 0}, {5}]
    # query 0: hits at ranks 2 and 4 -> (1/2 + 2/4) / min(2, K); query 1: hit at rank 1.
    assert map_at_k(ranks, targets, [1, 2, 4]) == pytest.approx({1: 50.0, 2: 62.5, 4: 75.0})
    assert recall_at_k(torch.tensor(ranks), targets, [1, 2]) == {1: 50.0, 2: 100.0}


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), n_q=st.integers(1, 25), levels=st.sampled_from([1, 400]))
def test_recall_subset_matches_brute_force(seed, n_q, levels):
    """CIRR: rank only among the 6 subset members minus the reference."""
    rng = np.random.default_rng(seed)
    n_g = 30
    q, g = quantised(rng, n_q, 4, levels), quantised(rng, n_g, 4, levels)
    subsets = [rng.choice(n_g, size=6, replace=False).tolist() for _ in range(n_q)]
    references = [s[0] for s in subsets]
    targets = [{s[rng.integers(1, 6)]} for s in subsets]
    ks = [1, 2, 3]
    full, _ = brute_rank(q, g, n_g, exclude=[[r] for r in references])
    within, _ = brute_rank(q, g, 5, candidates=subsets, exclude=[[r] for r in references])
    want = {k: brute_recall(within, targets, k) for k in ks}
    assert recall_subset_at_k(full, targets, subsets, ks) == pytest.approx(want)
    ids, _ = rank_gallery(
        torch.from_numpy(q), torch.from_numpy(g), 3, [[r] for r in references], subsets
    )
    assert recall_subset_at_k(ids, targets, subsets, ks, references) == pytest.approx(want)
    assert recall_at_k(ids, targets, ks) == pytest.approx(want)


def test_genecis_recall_within_per_query_galleries():
    rng = np.random.default_rng(3)
    q, g = quantised(rng, 40, 4, 400), quantised(rng, 300, 4, 400)
    galleries = [rng.choice(300, size=rng.integers(10, 16), replace=False).tolist() for _ in q]
    targets = [{gal[0]} for gal in galleries]
    ids, _ = rank_gallery(torch.from_numpy(q), torch.from_numpy(g), 3, candidates=galleries)
    want, _ = brute_rank(q, g, 3, candidates=galleries)
    got = recall_at_k(ids, targets, [1, 2, 3])
    assert got == pytest.approx({k: brute_recall(want, targets, k) for k in (1, 2, 3)})


def test_first_target_only_recall_ignores_the_other_ground_truths():
    """CIRCO's official R@K: only the first target (``target_img_id``) is a hit."""
    ranks = [[7, 3, 5], [2, 9, 4]]
    targets = [(3, 7), (4, 2)]  # query 0's first target at rank 2, query 1's at rank 3
    assert recall_at_k(ranks, targets, [1, 2, 3]) == {1: 100.0, 2: 100.0, 3: 100.0}
    first = recall_at_k(ranks, targets, [1, 2, 3], first_target_only=True)
    assert first == {1: 0.0, 2: 50.0, 3: 100.0}
    hits = recall_hits_at_k(ranks, targets, [2], first_target_only=True)[2]
    assert hits.tolist() == [1.0, 0.0]


def test_padding_never_counts_as_a_hit():
    assert recall_at_k([[-1, -1]], [{0}], [2]) == {2: 0.0}
    assert map_at_k([[4, -1]], [{4, 7}], [2]) == {2: 50.0}


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: recall_at_k([[0, 1]], [set()], [1]), "query 0 has no ground truth"),
        (lambda: map_at_k([[0, 1], [1, 0]], [{1}, []], [1]), "query 1 has no ground truth"),
        (lambda: recall_at_k([[0, 1]], [{0}], [3]), "exceeds the ranking depth 2"),
        (lambda: recall_at_k([[0, 1]], [{0}, {1}], [1]), "targets must have one entry"),
        (lambda: recall_at_k([0, 1], [{0}], [1]), "2-D integer array"),
        (lambda: map_at_k([[0]], [{0}], []), "ks is empty"),
        (lambda: recall_subset_at_k([[0]], [{0}], [], [1]), "subsets must have one entry"),
    ],
)
def test_metrics_reject_bad_input(call, match):
    with pytest.raises(ValueError, match=match):
        call()
