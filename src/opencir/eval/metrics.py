"""The one ranking and metric core shared by every benchmark.

:func:`rank_gallery` turns query and gallery embeddings into ranked gallery indices; the
metric functions turn ranked indices plus ground-truth index sets into numbers. Benchmark
adapters never rank anything themselves, so every benchmark follows the same rules:

* **Scores** are plain dot products (embeddings are L2-normalised, so this is cosine).
* **Memory** is bounded: a block of ``chunk_size`` queries is scored against a block of
  ``gallery_chunk_size`` gallery rows at a time and merged into a running top-k, so a
  100k+ gallery never materialises a full ``Q x G`` score matrix.
* **Ties** are broken deterministically: equal scores put the *lower gallery index first*
  (the result never depends on chunk sizes or on ``torch.topk``'s internal order).
* **Padding**: when fewer than ``k`` items can be ranked (small gallery, short candidate
  list, exclusions) the missing slots hold index ``-1`` and score ``-inf``. They never count
  as a hit.
* **Exclusions** (e.g. the query's own reference image) are removed before ranking.
* **Candidates** restrict each query to its own list of gallery indices (GeneCIS per-query
  galleries, CIRR subsets); GeneCIS R@K is ``recall_at_k`` on such a ranking.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Collection, Sequence

import numpy as np
import torch
import torch.nn.functional as F

IndexLists = Sequence[Sequence[int]]
RankLike = torch.Tensor | np.ndarray | Sequence[Sequence[int]]

NEG_INF = float("-inf")


# ----------------------------------------------------------------------------- ranking


def rank_gallery(
    queries: torch.Tensor,
    gallery: torch.Tensor,
    k: int,
    exclude: IndexLists | None = None,
    candidates: IndexLists | None = None,
    chunk_size: int = 1024,
    gallery_chunk_size: int = 8192,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rank ``gallery`` rows for every query by dot product and keep the top ``k``.

    Args:
        queries: ``[Q, D]`` query embeddings.
        gallery: ``[G, D]`` gallery embeddings.
        k: how many results to keep per query.
        exclude: per query, gallery indices that must not be returned (e.g. the reference).
        candidates: per query, the only gallery indices it may return (its own gallery).
        chunk_size: queries scored per block.
        gallery_chunk_size: gallery rows scored per block.

    Returns:
        ``(indices, scores)``: a ``[Q, k]`` long tensor and a ``[Q, k]`` float tensor, best
        first, equal scores ordered by lower gallery index; slots beyond what a query can
        rank are ``-1`` / ``-inf``. Tensors live on the device of ``queries``.
    """
    q, g = _check_embeddings(queries, gallery)
    _check_positive(k=k, chunk_size=chunk_size, gallery_chunk_size=gallery_chunk_size)
    n_q, n_g = q.shape[0], g.shape[0]
    excl = _check_index_lists(exclude, "exclude", n_q, n_g)
    cand = _check_index_lists(candidates, "candidates", n_q, n_g)
    if cand is None:
        scores, ids = _rank_dense(q, g, k, excl, chunk_size, gallery_chunk_size)
    else:
        scores, ids = _rank_candidates(q, g, k, cand, excl, chunk_size, gallery_chunk_size)
    ids[scores == NEG_INF] = -1
    return ids, scores


def _check_embeddings(queries: torch.Tensor, gallery: torch.Tensor) -> tuple:
    """Validate shapes and values; return both as float tensors on the query device."""
    for name, t in (("queries", queries), ("gallery", gallery)):
        if not isinstance(t, torch.Tensor) or t.ndim != 2:
            raise ValueError(f"{name} must be a 2-D torch.Tensor [N, D], got {_describe(t)}")
    if queries.shape[1] != gallery.shape[1]:
        raise ValueError(
            f"queries and gallery must share the embedding size, got {queries.shape[1]} "
            f"and {gallery.shape[1]}"
        )
    dtype = torch.float64 if torch.float64 in (queries.dtype, gallery.dtype) else torch.float32
    q = queries.to(dtype)
    g = gallery.to(device=q.device, dtype=dtype)
    for name, t in (("queries", q), ("gallery", g)):
        if not bool(torch.isfinite(t).all()):
            raise ValueError(f"{name} contain NaN or inf values; expected finite embeddings")
    return q, g


def _describe(t: object) -> str:
    shape = getattr(t, "shape", None)
    return (
        f"{type(t).__name__} with shape {tuple(shape)}" if shape is not None else type(t).__name__
    )


def _check_positive(**values: int) -> None:
    for name, value in values.items():
        if not isinstance(value, int | np.integer) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")


def _check_index_lists(
    lists: IndexLists | None, name: str, n_queries: int, n_gallery: int
) -> list[np.ndarray] | None:
    """Check one list of gallery indices per query, every index in ``[0, n_gallery)``."""
    if lists is None:
        return None
    if len(lists) != n_queries:
        raise ValueError(f"{name} must have one entry per query ({n_queries}), got {len(lists)}")
    out = []
    for i, row in enumerate(lists):
        arr = np.asarray(row, dtype=np.int64).reshape(-1)
        bad = arr[(arr < 0) | (arr >= n_gallery)]
        if bad.size:
            raise ValueError(
                f"{name}[{i}] holds gallery index {bad[0]}; expected 0 <= index < {n_gallery}"
            )
        out.append(arr)
    return out


def _topk_stable(scores: torch.Tensor, ids: torch.Tensor, k: int) -> tuple:
    """Top ``k`` of each row, best first; equal scores keep column order (earlier first).

    ``torch.topk`` picks arbitrary members of a tie at the cut-off. Taking ``k + 1`` shows
    which rows have such a tie (the k-th and (k+1)-th values are equal); only those rows are
    redone exactly. Callers lay columns out in gallery-index order among equal scores.
    """
    k = min(k, scores.shape[1])
    vals, cols = scores.topk(min(k + 1, scores.shape[1]), dim=1)
    if vals.shape[1] > k:
        tied = (vals[:, k] == vals[:, k - 1]).nonzero()[:, 0]
        cols = cols[:, :k]
        if tied.numel():
            cols[tied] = _leftmost_top(scores[tied], vals[tied, k - 1 : k], k)
    cols = cols.sort(dim=1).values  # back to column order, so the stable sort keeps it
    top_s, top_i = scores.gather(1, cols), ids.gather(1, cols)
    order = top_s.argsort(dim=1, descending=True, stable=True)
    return top_s.gather(1, order), top_i.gather(1, order)


def _leftmost_top(scores: torch.Tensor, kth: torch.Tensor, k: int) -> torch.Tensor:
    """Columns of all scores ``> kth`` plus the leftmost ones ``== kth``, ``k`` per row."""
    at = scores == kth
    need = k - (scores > kth).sum(dim=1, keepdim=True)
    keep = (scores > kth) | (at & (at.cumsum(dim=1) <= need))
    return keep.nonzero()[:, 1].view(scores.shape[0], k)  # row-major: column order kept


def _rank_dense(
    q: torch.Tensor,
    g: torch.Tensor,
    k: int,
    exclude: list[np.ndarray] | None,
    chunk_size: int,
    gallery_chunk_size: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Chunked full-gallery ranking with a running top-k per query block."""
    device = q.device
    out_s = torch.full((q.shape[0], k), NEG_INF, dtype=q.dtype, device=device)
    out_i = torch.full((q.shape[0], k), -1, dtype=torch.long, device=device)
    rows, cols = _exclusion_pairs(exclude, device)
    for q0 in range(0, q.shape[0], chunk_size):
        best_s, best_i = out_s[q0 : q0 + chunk_size], out_i[q0 : q0 + chunk_size]
        for g0 in range(0, g.shape[0], gallery_chunk_size):
            block = q[q0 : q0 + chunk_size] @ g[g0 : g0 + gallery_chunk_size].T
            _mask_block(block, rows, cols, q0, g0)
            block_ids = torch.arange(g0, g0 + block.shape[1], device=device).expand_as(block)
            block_s, block_i = _topk_stable(block, block_ids, k)
            # Running best first: its indices are all lower than this block's, so column
            # order among equal scores is gallery-index order, as _topk_stable requires.
            best_s, best_i = _topk_stable(
                torch.cat([best_s, block_s], dim=1), torch.cat([best_i, block_i], dim=1), k
            )
        out_s[q0 : q0 + chunk_size], out_i[q0 : q0 + chunk_size] = best_s, best_i
    return out_s, out_i


def _exclusion_pairs(exclude: list[np.ndarray] | None, device: torch.device) -> tuple:
    """Flatten per-query exclusions into parallel (query row, gallery column) tensors."""
    exclude = exclude or []
    rows = np.repeat(np.arange(len(exclude)), [len(e) for e in exclude])
    cols = np.concatenate(exclude) if exclude else np.zeros(0, dtype=np.int64)
    return torch.from_numpy(rows).to(device), torch.from_numpy(cols).to(device)


def _mask_block(block: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor, q0: int, g0: int):
    """Set excluded (query, gallery) pairs falling inside this block to ``-inf``."""
    if rows.numel() == 0:
        return
    n_q, n_g = block.shape
    sel = (rows >= q0) & (rows < q0 + n_q) & (cols >= g0) & (cols < g0 + n_g)
    block[rows[sel] - q0, cols[sel] - g0] = NEG_INF


def _rank_candidates(
    q: torch.Tensor,
    g: torch.Tensor,
    k: int,
    candidates: list[np.ndarray],
    exclude: list[np.ndarray] | None,
    chunk_size: int,
    gallery_chunk_size: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rank each query only within its own candidate list (minus its exclusions).

    Queries sharing one list (e.g. a FashionIQ category gallery) are ranked together against
    that sub-gallery with the dense path; the remaining short, unique lists (GeneCIS, CIRR
    subsets) are scored in padded batches.
    """
    out_s = torch.full((q.shape[0], k), NEG_INF, dtype=q.dtype, device=q.device)
    out_i = torch.full((q.shape[0], k), -1, dtype=torch.long, device=q.device)
    # Sorted unique lists: column order is gallery-index order, as _topk_stable requires.
    lists = [_sorted_unique(c, exclude[i] if exclude else None) for i, c in enumerate(candidates)]
    budget = chunk_size * gallery_chunk_size
    singles = []
    for members in _group_identical(lists):
        lst = lists[members[0]]
        if lst.size == 0:
            continue  # nothing to rank: the rows stay padding
        if len(members) == 1 and lst.size * g.shape[1] <= budget:
            singles.append(members[0])
            continue
        sub = torch.from_numpy(lst).to(q.device)
        s, i = _rank_dense(q[members], g[sub], k, None, chunk_size, gallery_chunk_size)
        out_s[members], out_i[members] = s, torch.where(i >= 0, sub[i.clamp(min=0)], -1)
    _rank_padded(q, g, k, lists, singles, budget, out_s, out_i)
    return out_s, out_i


def _sorted_unique(values: np.ndarray, drop: np.ndarray | None) -> np.ndarray:
    """Sorted distinct ``values`` minus those in ``drop`` (np.unique hashes first: slow)."""
    values = np.sort(values)
    values = values[np.concatenate(([True], values[1:] != values[:-1]))] if values.size else values
    return values[~np.isin(values, drop)] if drop is not None and drop.size else values


def _group_identical(lists: list[np.ndarray]) -> list[list[int]]:
    """Positions of the queries grouped by identical candidate list."""
    groups: dict[bytes, list[int]] = defaultdict(list)
    for i, lst in enumerate(lists):
        groups[lst.tobytes()].append(i)
    return list(groups.values())


def _rank_padded(q, g, k, lists, rows, budget, out_s, out_i) -> None:
    """Score short per-query lists as ``[B, L]`` padded blocks of at most ``budget`` numbers."""
    rows = sorted(rows, key=lambda r: len(lists[r]))
    dim, start = g.shape[1], 0
    while start < len(rows):
        end = start + 1
        while end < len(rows) and (end - start + 1) * len(lists[rows[end]]) * dim <= budget:
            end += 1
        chunk = rows[start:end]
        ids_np = np.full((len(chunk), len(lists[chunk[-1]])), -1, dtype=np.int64)
        for b, r in enumerate(chunk):
            ids_np[b, : len(lists[r])] = lists[r]
        ids = torch.from_numpy(ids_np).to(q.device)
        scores = torch.einsum("bd,bld->bl", q[chunk], g[ids.clamp(min=0)])
        scores[ids < 0] = NEG_INF
        if ids.shape[1] < k:  # pad so every row yields k slots
            scores = F.pad(scores, (0, k - ids.shape[1]), value=NEG_INF)
            ids = F.pad(ids, (0, k - ids.shape[1]), value=-1)
        out_s[chunk], out_i[chunk] = _topk_stable(scores, ids, k)
        start = end


# ----------------------------------------------------------------------------- metrics


def recall_at_k(
    ranks: RankLike,
    targets: Sequence[Collection[int]],
    ks: Sequence[int],
    first_target_only: bool = False,
) -> dict[int, float]:
    """Recall@K ×100: share of queries with any ground truth among their first K results.

    ``ranks`` is ``[Q, W]`` ranked gallery indices (``-1`` = padding, never a hit) and
    ``targets`` one non-empty collection of ground-truth indices per query. Ranking within
    per-query candidate lists (GeneCIS) gives GeneCIS R@K. ``first_target_only`` counts only
    the first entry of each (ordered) ``targets`` as a hit, as the official CIRCO Recall@K
    does with ``target_img_id``; the other ground truths then count as misses.
    """
    return percent(recall_hits_at_k(ranks, targets, ks, first_target_only))


def recall_hits_at_k(
    ranks: RankLike,
    targets: Sequence[Collection[int]],
    ks: Sequence[int],
    first_target_only: bool = False,
) -> dict[int, np.ndarray]:
    """Per-query Recall@K: ``[Q]`` of 1.0 where a ground truth is among the first K, else 0.0.

    :func:`recall_at_k` is their mean ×100; the per-query values feed the confidence
    intervals and paired tests of :mod:`opencir.eval.stats`. ``first_target_only``: see
    :func:`recall_at_k`.
    """
    if first_target_only:
        targets = [list(t)[:1] for t in targets]
    hits = _relevance(ranks, targets)
    _check_ks(ks, hits.shape[1])
    return {int(k): hits[:, :k].any(axis=1).astype(np.float64) for k in ks}


def percent(per_query: dict[int, np.ndarray]) -> dict[int, float]:
    """The mean ×100 of each per-query metric array (the published form of a metric)."""
    return {k: float(values.mean() * 100.0) for k, values in per_query.items()}


def recall_subset_at_k(
    ranks: RankLike,
    targets: Sequence[Collection[int]],
    subsets: Sequence[Collection[int]],
    ks: Sequence[int],
    references: Sequence[int] | None = None,
) -> dict[int, float]:
    """CIRR Recall_subset@K ×100: recall counted only among each query's subset members.

    The mean ×100 of :func:`recall_subset_hits_at_k`.
    """
    return percent(recall_subset_hits_at_k(ranks, targets, subsets, ks, references))


def recall_subset_hits_at_k(
    ranks: RankLike,
    targets: Sequence[Collection[int]],
    subsets: Sequence[Collection[int]],
    ks: Sequence[int],
    references: Sequence[int] | None = None,
) -> dict[int, np.ndarray]:
    """Per-query CIRR Recall_subset@K hits (1.0 / 0.0), see :func:`recall_subset_at_k`.

    Each ranking is filtered to the members of its query's subset (minus its reference,
    when ``references`` is given), keeping their relative order. ``ranks`` must contain every
    subset member a query can rank, e.g. from ``rank_gallery(candidates=subsets)``.
    """
    arr = _as_rank_array(ranks)
    if len(subsets) != arr.shape[0]:
        raise ValueError(
            f"subsets must have one entry per query ({arr.shape[0]}), got {len(subsets)}"
        )
    if references is not None and len(references) != arr.shape[0]:
        raise ValueError(
            f"references must have one entry per query ({arr.shape[0]}), got {len(references)}"
        )
    width = max(ks) if len(ks) else 0
    filtered = np.full((arr.shape[0], width), -1, dtype=np.int64)
    for i, (row, subset) in enumerate(zip(arr, subsets, strict=True)):
        members = set(int(j) for j in subset) - (
            {int(references[i])} if references is not None else set()
        )
        kept = [j for j in row.tolist() if j in members][:width]
        filtered[i, : len(kept)] = kept
    return recall_hits_at_k(filtered, targets, ks)


def map_at_k(
    ranks: RankLike, targets: Sequence[Collection[int]], ks: Sequence[int]
) -> dict[int, float]:
    """CIRCO mAP@K ×100 with all ground truths.

    ``AP@K = sum_{i<=K} P@i * rel_i / min(|GT|, K)``, averaged over queries. ``ranks`` must
    not repeat an index within a row (``rank_gallery`` never does).
    """
    return percent(average_precision_at_k(ranks, targets, ks))


def average_precision_at_k(
    ranks: RankLike, targets: Sequence[Collection[int]], ks: Sequence[int]
) -> dict[int, np.ndarray]:
    """Per-query AP@K in [0, 1] (``[Q]`` per K); :func:`map_at_k` is their mean ×100."""
    rel = _relevance(ranks, targets).astype(np.float64)
    _check_ks(ks, rel.shape[1])
    precision = np.cumsum(rel, axis=1) / np.arange(1, rel.shape[1] + 1)
    n_gt = np.array([len(set(int(j) for j in t)) for t in targets], dtype=np.float64)
    return {int(k): (precision[:, :k] * rel[:, :k]).sum(axis=1) / np.minimum(n_gt, k) for k in ks}


def _as_rank_array(ranks: RankLike) -> np.ndarray:
    if isinstance(ranks, torch.Tensor):
        ranks = ranks.detach().cpu().numpy()
    arr = np.asarray(ranks)
    if arr.ndim != 2 or not (arr.size == 0 or np.issubdtype(arr.dtype, np.integer)):
        raise ValueError(f"ranks must be a 2-D integer array [Q, W], got {_describe(arr)}")
    if arr.shape[0] == 0:
        raise ValueError("ranks has no queries; expected at least one row")
    return arr.astype(np.int64, copy=False)


def _relevance(ranks: RankLike, targets: Sequence[Collection[int]]) -> np.ndarray:
    """Boolean ``[Q, W]``: is ranked item ``(i, j)`` a ground truth of query ``i``."""
    arr = _as_rank_array(ranks)
    if len(targets) != arr.shape[0]:
        raise ValueError(
            f"targets must have one entry per query ({arr.shape[0]}), got {len(targets)}"
        )
    gt = [sorted(set(int(j) for j in t)) for t in targets]
    empty = [i for i, t in enumerate(gt) if not t]
    if empty:
        raise ValueError(
            f"query {empty[0]} has no ground truth ({len(empty)} such queries); metrics "
            "need at least one target per query (hidden test splits cannot be scored)"
        )
    if any(t[0] < 0 for t in gt):
        raise ValueError("targets must be non-negative gallery indices")
    width = max(len(t) for t in gt)
    padded = np.full((arr.shape[0], width), -2, dtype=np.int64)
    for i, t in enumerate(gt):
        padded[i, : len(t)] = t
    rel = np.zeros(arr.shape, dtype=bool)
    for j in range(width):  # one column at a time keeps memory at Q x W
        rel |= arr == padded[:, j : j + 1]
    return rel


def _check_ks(ks: Sequence[int], width: int) -> None:
    if len(ks) == 0:
        raise ValueError("ks is empty; expected at least one cut-off K")
    for k in ks:
        if not isinstance(k, int | np.integer) or k < 1:
            raise ValueError(f"cut-off K must be a positive integer, got {k!r}")
        if k > width:
            raise ValueError(
                f"cut-off K={k} exceeds the ranking depth {width}; rank with k >= {k} "
                "(rank_gallery pads short rankings, so any k is allowed there)"
            )
