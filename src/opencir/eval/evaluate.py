"""Evaluate any :class:`~opencir.models.base.Retriever` on any :class:`BenchmarkSplit`.

The evaluator embeds the gallery (cached on disk) and the queries, ranks with the shared
metric core (:mod:`opencir.eval.metrics`) under the split's protocol switches and returns an
:class:`EvalResult` holding the numbers, the switches and the top-K rankings (for submission
files and qualitative grids). Metric names: ``R@K``, ``R_subset@K``, ``mAP@K``; when ``R@K``
counts the first target only (CIRCO), ``R_anyGT@K`` counts a hit on any ground truth; when
both recall families are computed (CIRR), ``R_avg`` = (R@5 + R_subset@1) / 2.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from opencir.atomic import atomic_write
from opencir.eval.benchmark import BenchmarkSplit, CIRQuery
from opencir.eval.metrics import (
    average_precision_at_k,
    rank_gallery,
    recall_hits_at_k,
    recall_subset_hits_at_k,
)
from opencir.models.base import Retriever, retriever_fingerprint

log = logging.getLogger(__name__)

METRIC_FAMILIES = ("recall", "recall_subset", "map")


# ----------------------------------------------------------------------------- result


@dataclass
class EvalResult:
    """Numbers, protocol and rankings of one model on one benchmark split.

    ``rankings``: query id → top gallery keys, best first, under the split's protocol.
    ``subset_rankings``: the same within each CIRR subset (reference removed), when the
    split asks for ``recall_subset``; test-server files are written from these two.
    ``per_query``: metric → one value per query in ``query_ids`` order (1/0 hits for
    recalls, AP in [0, 1] for mAP), whose mean ×100 is the metric; ``query_groups`` the
    group of each query when the split has groups. Confidence intervals and paired tests
    (:mod:`opencir.eval.stats`) are computed from them.
    """

    benchmark: str
    split: str
    metrics: dict[str, float]
    per_group: dict[str, dict[str, float]]
    group_mean: dict[str, float]
    protocol: dict[str, Any]
    model_fingerprint: str
    dataset_fingerprint: str
    num_queries: int
    num_gallery: int
    rankings: dict[str, list[str]] = field(default_factory=dict)
    subset_rankings: dict[str, list[str]] = field(default_factory=dict)
    gallery_cache_hit: bool = False
    query_ids: list[str] = field(default_factory=list)
    per_query: dict[str, list[float]] = field(default_factory=dict)
    query_groups: list[str] = field(default_factory=list)

    def to_json(
        self, path: str | Path | None = None, indent: int | None = 2, rankings: bool = True
    ) -> str:
        """The result as JSON text; also written (atomically) to ``path`` when given.

        ``rankings=False`` leaves the per-query rankings out (metrics and per-query hits stay:
        enough for ``opencir results``' intervals and paired tests, at a fraction of the size).
        """
        data = asdict(self)
        if not rankings:
            data.update(rankings={}, subset_rankings={})
        text = json.dumps(data, indent=indent, default=str)
        if path is not None:
            _atomic_write(Path(path), lambda f: f.write(text.encode()))
        return text

    @classmethod
    def from_json(cls, text: str) -> EvalResult:
        """Rebuild a result from :meth:`to_json` output."""
        return cls(**json.loads(text))

    def format_table(self) -> str:
        """A readable text table: metrics per group, then the protocol switches."""
        lines = [
            f"OpenCIR evaluation: {self.benchmark}/{self.split} "
            f"({self.num_queries} queries, {self.num_gallery} gallery images)",
            f"model {self.model_fingerprint}  data {self.dataset_fingerprint}  "
            f"gallery cache {'hit' if self.gallery_cache_hit else 'miss'}",
        ]
        if self.metrics:
            lines += _metric_table(self.metrics, self.per_group, self.group_mean)
        else:
            lines.append(
                f"no ground truth: metrics skipped, rankings kept for {len(self.rankings)}"
            )
        lines.append("protocol:")
        lines += [f"  {key} = {value!r}" for key, value in self.protocol.items()]
        return "\n".join(lines)


def _metric_table(
    overall: dict[str, float], per_group: dict[str, dict[str, float]], mean: dict[str, float]
) -> list[str]:
    columns = {"overall": overall, **per_group}
    if mean:
        columns["mean of groups"] = mean
    widths = {name: max(9, len(name) + 2) for name in columns}
    rows = [f"{'metric':<12}" + "".join(f"{n:>{w}}" for n, w in widths.items())]
    for metric in overall:
        cells = [
            f"{col[metric]:>{widths[name]}.2f}" if metric in col else f"{'-':>{widths[name]}}"
            for name, col in columns.items()
        ]
        rows.append(f"{metric:<12}" + "".join(cells))
    return rows


# ----------------------------------------------------------------------------- evaluate


def evaluate(
    model: Retriever,
    split: BenchmarkSplit,
    batch_size: int = 32,
    cache_dir: str | Path | None = None,
    progress: bool = True,
    keep_rankings: int = 50,
    chunk_size: int = 1024,
) -> EvalResult:
    """Embed, rank and score ``split`` with ``model`` under the split's protocol.

    The gallery embeddings are cached in ``cache_dir`` (keyed by the model and gallery
    fingerprints, so splits sharing a gallery share them). ``keep_rankings`` top results per
    query are kept as gallery keys. Splits whose queries carry no ground truth (hidden test
    sets) get rankings but no metrics.
    """
    _check_args(split, batch_size, keep_rankings)
    index = gallery_index(split)
    targets = _target_indices(split, index)
    has_gt = bool(targets) and all(targets)
    gallery_emb, hit = embed_gallery(model, split, batch_size, cache_dir, progress)
    query_emb = embed_queries(model, split, batch_size, progress)
    needs_depth = has_gt and any(m in split.metrics for m in ("recall", "map"))
    depth = max(keep_rankings, *split.ks) if needs_depth else keep_rankings
    ids = _rank(split, index, query_emb, gallery_emb, depth, chunk_size)
    subsets, subset_ids = None, None
    if "recall_subset" in split.metrics:
        subsets, subset_ids = _subset_ranking(split, index, query_emb, gallery_emb, chunk_size)
    per_query, metrics, per_group, group_mean = {}, {}, {}, {}
    if has_gt:
        scores = _score(split, index, ids, targets, subsets, subset_ids)
        per_query, metrics, per_group, group_mean = scores
    else:
        log.info("%s/%s has no ground truth: metrics skipped", split.benchmark, split.split)
    return EvalResult(
        benchmark=split.benchmark,
        split=split.split,
        metrics=metrics,
        per_group=per_group,
        group_mean=group_mean,
        protocol=_protocol(split),
        model_fingerprint=retriever_fingerprint(model),
        dataset_fingerprint=dataset_fingerprint(split),
        num_queries=len(split.queries),
        num_gallery=len(split.gallery),
        rankings=_rankings(split, ids, keep_rankings),
        subset_rankings={} if subset_ids is None else _rankings(split, subset_ids, keep_rankings),
        gallery_cache_hit=hit,
        query_ids=[q.id for q in split.queries] if per_query else [],
        per_query={name: _compact(values) for name, values in per_query.items()},
        query_groups=_query_groups(split) if per_query else [],
    )


def _compact(values: np.ndarray) -> list[float]:
    """Per-query values for JSON: hits stay 0/1, AP keeps 6 decimals."""
    return [round(float(v), 6) for v in values]


def _query_groups(split: BenchmarkSplit) -> list[str]:
    return [] if split.group is None else [str(split.group(q)) for q in split.queries]


def _check_args(split: BenchmarkSplit, batch_size: int, keep_rankings: int) -> None:
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if keep_rankings < 0:
        raise ValueError(f"keep_rankings must be >= 0, got {keep_rankings}")
    if not split.gallery or not split.queries:
        raise ValueError(
            f"{split.benchmark}/{split.split} needs a non-empty gallery and query list, got "
            f"{len(split.gallery)} gallery images and {len(split.queries)} queries"
        )
    unknown = sorted(set(split.metrics) - set(METRIC_FAMILIES))
    if unknown:
        raise ValueError(f"unknown metric families {unknown}; expected any of {METRIC_FAMILIES}")
    ids = [q.id for q in split.queries]
    if len(set(ids)) != len(ids):
        raise ValueError(f"{split.benchmark}/{split.split} has duplicate query ids")


def gallery_index(split: BenchmarkSplit) -> dict[str, int]:
    """Map gallery key → row; duplicate keys are an adapter bug."""
    index = {key: i for i, key in enumerate(split.gallery)}
    if len(index) != len(split.gallery):
        raise ValueError(f"{split.benchmark}/{split.split} gallery has duplicate image keys")
    return index


def _indices(keys: Sequence[str], index: dict[str, int], query: CIRQuery, what: str) -> list:
    missing = [k for k in keys if k not in index]
    if missing:
        raise ValueError(
            f"query {query.id!r}: {what} key {missing[0]!r} is not in the split gallery; "
            "expected every target/subset/per-query gallery key to be a gallery image"
        )
    return [index[k] for k in keys]


def _target_indices(split: BenchmarkSplit, index: dict[str, int]) -> list[list[int]]:
    """Ground-truth gallery rows per query; all queries have targets, or none."""
    targets = [_indices(q.targets, index, q, "target") for q in split.queries]
    empty = [q.id for q, t in zip(split.queries, targets, strict=True) if not t]
    if empty and len(empty) != len(targets):
        raise ValueError(
            f"{len(empty)} of {len(targets)} queries have no targets (first: {empty[0]!r}); "
            "expected ground truth for every query, or for none (hidden test split)"
        )
    return targets


# ----------------------------------------------------------------------------- embedding


def dataset_fingerprint(split: BenchmarkSplit) -> str:
    """Hash of benchmark, split, gallery keys and the *content* of ``split.fingerprint_files``.

    Neither path nor mtime enters: the same annotation files copied to another folder or
    machine, or a miniature world regenerated from its seed, give the same fingerprint, so
    results measured there pair with results measured here (``opencir results``).
    """
    h = _name_hash((split.benchmark, split.split), split.gallery)
    for name in split.fingerprint_files:
        try:
            with open(name, "rb") as f:
                h.update(hashlib.file_digest(f, "sha256").digest())
        except OSError:
            log.warning("fingerprint file %s is missing; the data fingerprint ignores it", name)
            h.update(b"missing\0")
    return h.hexdigest()[:16]


def gallery_fingerprint(split: BenchmarkSplit) -> str:
    """Hash of what the gallery images depend on, not of the split's name or queries.

    Benchmark, gallery keys and size+mtime of ``split.gallery_files`` (of
    ``split.fingerprint_files`` when the adapter names no gallery files), so two splits of
    one gallery (CIRCO val and test) get the same fingerprint.
    """
    files = split.gallery_files or split.fingerprint_files
    return _stat_cache_key((split.benchmark,), split.gallery, files)


def _name_hash(names: Sequence[str], keys: Sequence[str]) -> hashlib._Hash:
    h = hashlib.sha256("\0".join([*names, str(len(keys)), ""]).encode())
    for key in keys:
        h.update(key.encode() + b"\0")
    return h


def _stat_cache_key(names: Sequence[str], keys: Sequence[str], files: Sequence[str]) -> str:
    """A cache key: ``names``, ``keys`` and path, size and mtime of ``files`` (no reading)."""
    h = _name_hash(names, keys)
    for name in files:
        try:
            st = os.stat(name)
            h.update(f"{os.path.abspath(name)}\0{st.st_size}\0{st.st_mtime_ns}\0".encode())
        except OSError:
            log.warning("fingerprint file %s is missing; cache key ignores it", name)
            h.update(f"{os.path.abspath(name)}\0missing\0".encode())
    return h.hexdigest()[:16]


def gallery_cache_path(model: Retriever, split: BenchmarkSplit, cache_dir: str | Path) -> Path:
    """Where the gallery embeddings of ``model`` on ``split``'s gallery are cached."""
    key = f"{retriever_fingerprint(model)}\0{gallery_fingerprint(split)}"
    digest = hashlib.sha256(key.encode()).hexdigest()[:24]
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", f"{split.benchmark}-gallery")
    return Path(cache_dir) / f"{stem}-{digest}.npy"


def embed_gallery(
    model: Retriever,
    split: BenchmarkSplit,
    batch_size: int = 32,
    cache_dir: str | Path | None = None,
    progress: bool = True,
) -> tuple[torch.Tensor, bool]:
    """``[G, D]`` gallery embeddings and whether they came from the cache.

    Only models with a ``fingerprint()`` are cached: a class name alone cannot tell two
    checkpoints apart, and a stale cache would silently give wrong numbers.
    """
    path = None
    if cache_dir is not None and callable(getattr(model, "fingerprint", None)):
        path = gallery_cache_path(model, split, cache_dir)
    elif cache_dir is not None:
        log.warning("%s has no fingerprint(): gallery embeddings not cached", type(model).__name__)
    cached = _load_cache(path, len(split.gallery)) if path is not None else None
    if cached is not None:
        log.info("gallery embeddings from cache %s", path)
        return cached, True
    batches = _batches(split.gallery, batch_size, progress, f"{split.benchmark} gallery")
    emb = _encode(
        model, lambda keys: model.encode_target([split.load_image(k) for k in keys]), batches
    )
    if path is not None:
        _atomic_write(path, lambda f: np.save(f, emb.numpy()))
        log.info("gallery embeddings cached at %s", path)
    return emb, False


def embed_queries(
    model: Retriever, split: BenchmarkSplit, batch_size: int = 32, progress: bool = True
) -> torch.Tensor:
    """``[Q, D]`` query embeddings from reference images and modification texts."""

    def encode(queries: Sequence[CIRQuery]) -> torch.Tensor:
        images = [split.load_image(q.reference) for q in queries]
        return model.encode_query(images, [q.text for q in queries])

    batches = _batches(split.queries, batch_size, progress, f"{split.benchmark} queries")
    return _encode(model, encode, batches)


def _batches(items: Sequence, batch_size: int, progress: bool, desc: str):
    with tqdm(total=len(items), desc=desc, unit="item", disable=not progress) as bar:
        for start in range(0, len(items), batch_size):
            batch = items[start : start + batch_size]
            yield batch
            bar.update(len(batch))


def _encode(model: Any, encode, batches) -> torch.Tensor:
    """Run ``encode`` over ``batches`` in eval mode without grad; check and stack outputs."""
    was_training = isinstance(model, torch.nn.Module) and model.training
    if was_training:
        model.eval()
    try:
        chunks = []
        with torch.no_grad():
            for batch in batches:
                chunks.append(_check_output(encode(batch), len(batch), chunks))
    finally:
        if was_training:
            model.train()
    return torch.cat(chunks)


def _check_output(out: Any, n: int, previous: list[torch.Tensor]) -> torch.Tensor:
    if not isinstance(out, torch.Tensor) or out.ndim != 2 or out.shape[0] != n:
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ValueError(f"model returned {shape} for a batch of {n}; expected a [{n}, D] tensor")
    if previous and out.shape[1] != previous[0].shape[1]:
        raise ValueError(
            f"model embedding size changed from {previous[0].shape[1]} to {out.shape[1]}"
        )
    return out.detach().to(device="cpu", dtype=torch.float32)


def _load_cache(path: Path, n_gallery: int) -> torch.Tensor | None:
    if not path.exists():
        return None
    try:
        arr = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as err:
        log.warning("ignoring unreadable gallery cache %s: %s", path, err)
        return None
    if arr.ndim != 2 or arr.shape[0] != n_gallery:
        log.warning(
            "ignoring gallery cache %s: shape %s, expected %d rows", path, arr.shape, n_gallery
        )
        return None
    return torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32))


def _atomic_write(path: Path, write) -> None:
    """Serialise with ``write(stream)`` into memory, then write the bytes atomically."""
    buffer = io.BytesIO()
    write(buffer)
    atomic_write(path, buffer.getvalue())


# ----------------------------------------------------------------------------- ranking


def _rank(split, index, query_emb, gallery_emb, depth, chunk_size) -> torch.Tensor:
    """``[Q, depth]`` gallery rows under the split's exclusion and per-query gallery rules."""
    if depth == 0:
        return torch.zeros(len(split.queries), 0, dtype=torch.long)
    ids, _ = rank_gallery(
        query_emb,
        gallery_emb,
        depth,
        exclude=_reference_exclusions(split, index) if split.exclude_reference else None,
        candidates=_per_query_galleries(split, index),
        chunk_size=chunk_size,
    )
    return ids


def _reference_exclusions(split: BenchmarkSplit, index: dict[str, int]) -> list[list[int]]:
    return [[index[q.reference]] if q.reference in index else [] for q in split.queries]


def _per_query_galleries(split: BenchmarkSplit, index: dict[str, int]) -> list[list[int]] | None:
    have = [q.gallery is not None for q in split.queries]
    if not any(have):
        return None
    if not all(have):
        raise ValueError(
            f"{have.count(False)} queries lack a per-query gallery while others have one; "
            "expected CIRQuery.gallery on every query or on none"
        )
    return _key_lists_to_rows(split, index, "gallery")


def _key_lists_to_rows(split: BenchmarkSplit, index: dict[str, int], attr: str) -> list:
    """Gallery rows of each query's ``gallery`` or ``subset`` keys.

    A list shared by many queries (a FashionIQ category gallery) is looked up only once.
    """
    cache: dict[tuple[str, ...], np.ndarray] = {}
    out = []
    for q in split.queries:
        keys = tuple(getattr(q, attr))
        if keys not in cache:
            cache[keys] = np.asarray(_indices(keys, index, q, attr), dtype=np.int64)
        out.append(cache[keys])
    return out


def _subset_ranking(split, index, query_emb, gallery_emb, chunk_size) -> tuple[list, torch.Tensor]:
    """CIRR subsets: rank only among each query's subset members minus its reference."""
    missing = [q.id for q in split.queries if q.subset is None]
    if missing:
        raise ValueError(f"recall_subset needs CIRQuery.subset; query {missing[0]!r} has none")
    subsets = _key_lists_to_rows(split, index, "subset")
    ids, _ = rank_gallery(
        query_emb,
        gallery_emb,
        max([*split.subset_ks, *(len(s) for s in subsets)]),
        exclude=_reference_exclusions(split, index),
        candidates=subsets,
        chunk_size=chunk_size,
    )
    return subsets, ids


def _rankings(split: BenchmarkSplit, ids: torch.Tensor, keep: int) -> dict[str, list[str]]:
    rows = ids[:, :keep].tolist()
    return {
        q.id: [split.gallery[j] for j in row if j >= 0]
        for q, row in zip(split.queries, rows, strict=True)
    }


# ----------------------------------------------------------------------------- scoring


def _score(split, index, ids, targets, subsets, subset_ids) -> tuple:
    """Per-query values, overall metrics, metrics per group and the mean of the groups.

    Every metric is first computed per query (hit 1/0, or AP); overall and per-group
    metrics are means of those ×100, so the saved per-query values reproduce them exactly.
    """
    per_query = _per_query_values(split, index, ids, targets, subsets, subset_ids)
    overall = _means(per_query, slice(None))
    if split.group is None:
        return per_query, overall, {}, {}
    groups: dict[str, list[int]] = {}
    for i, q in enumerate(split.queries):
        groups.setdefault(str(split.group(q)), []).append(i)
    per_group = {name: _means(per_query, groups[name]) for name in sorted(groups)}
    mean = {m: float(np.mean([g[m] for g in per_group.values()])) for m in overall}
    return per_query, overall, per_group, mean


def _per_query_values(split, index, ids, targets, subsets, subset_ids) -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}
    if "recall" in split.metrics:
        out |= _recall_hits(split, ids, targets)
    if subsets is not None:
        refs = [index.get(q.reference, -1) for q in split.queries]
        sub = recall_subset_hits_at_k(subset_ids, targets, subsets, split.subset_ks, refs)
        out |= {f"R_subset@{k}": v for k, v in sub.items()}
    if "map" in split.metrics:
        out |= {f"mAP@{k}": v for k, v in average_precision_at_k(ids, targets, split.ks).items()}
    if "R@5" in out and "R_subset@1" in out:
        out["R_avg"] = (out["R@5"] + out["R_subset@1"]) / 2
    return out


def _recall_hits(split: BenchmarkSplit, ids, targets) -> dict[str, np.ndarray]:
    """``R@K`` as the benchmark counts it; beside a first-target ``R@K`` (CIRCO), ``R_anyGT@K``."""
    first = split.recall_first_target
    out = {f"R@{k}": v for k, v in recall_hits_at_k(ids, targets, split.ks, first).items()}
    if first:
        out |= {f"R_anyGT@{k}": v for k, v in recall_hits_at_k(ids, targets, split.ks).items()}
    return out


def _means(per_query: dict[str, np.ndarray], rows: slice | list[int]) -> dict[str, float]:
    return {name: float(values[rows].mean() * 100.0) for name, values in per_query.items()}


def _protocol(split: BenchmarkSplit) -> dict[str, Any]:
    """The adapter's switches plus the evaluator's own (which win on a clash)."""
    switches: dict[str, Any] = {
        "exclude_reference": split.exclude_reference,
        "per_query_gallery": any(q.gallery is not None for q in split.queries),
        "metrics": list(split.metrics),
        "ks": list(split.ks),
        "ties": "lower gallery index first",
    }
    if "recall_subset" in split.metrics:
        switches["subset_ks"] = list(split.subset_ks)
        switches["subset_excludes_reference"] = True
    for key, value in switches.items():
        if key in split.protocol and split.protocol[key] != value:
            log.warning(
                "protocol %s=%r overridden by evaluator: %r", key, split.protocol[key], value
            )
    return {**split.protocol, **switches}
