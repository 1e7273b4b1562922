"""Test-server submission files for CIRR and CIRCO: build, validate, write atomically, read.

Inputs are ``rankings`` (query id → ranked gallery keys, best first, the reference already
removed where the protocol removes it) and the :class:`BenchmarkSplit` they were made for.
Everything is checked before a byte is written, so a file on disk is always one the server
accepts: every query present and no other, no repeats, exact list sizes, ids from the gallery.

* CIRR: ``recall`` {"version": "rc2", "metric": "recall", pairid: [50 image names]} and
  ``recall_subset`` {..., "metric": "recall_subset", pairid: [3 names from the query's subset]}.
* CIRCO: {query id: [50 COCO image ids (integers)]}.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from opencir.atomic import atomic_write
from opencir.eval.benchmark import BenchmarkSplit, CIRQuery

CIRR_VERSION = "rc2"
CIRR_RECALL_SIZE = 50
CIRR_SUBSET_SIZE = 3
CIRCO_SIZE = 50

Rankings = Mapping[str, Sequence[str]]


@dataclass(frozen=True)
class CIRRSubmission:
    """One CIRR submission file read back."""

    version: str
    metric: str
    predictions: dict[str, list[str]]


# ----------------------------------------------------------------------------- validation


def _check_benchmark(split: BenchmarkSplit, benchmark: str) -> None:
    if split.benchmark != benchmark:
        raise ValueError(f"expected a {benchmark} split, got benchmark {split.benchmark!r}")


def _check_queries(rankings: Mapping[str, Any], split: BenchmarkSplit, what: str) -> None:
    """Every query of the split has a ranking, and no ranking is for an unknown query."""
    expected = {q.id for q in split.queries}
    given = set(rankings)
    for problem, ids in (("missing", expected - given), ("unknown", given - expected)):
        if ids:
            shown = ", ".join(sorted(map(str, ids))[:5])
            raise ValueError(
                f"{what}: {len(ids)} {problem} query id(s) (e.g. {shown}); expected exactly "
                f"the {len(expected)} queries of {split.benchmark} {split.split}"
            )


def _top(ranking: Sequence[str], size: int, query_id: str, what: str) -> list[str]:
    """The first ``size`` entries, which must exist and be distinct."""
    top = [str(k) for k in list(ranking)[:size]]
    if len(top) < size:
        raise ValueError(
            f"{what}: query {query_id} has {len(top)} results; the server needs {size}"
        )
    if len(set(top)) != len(top):
        dup = next(k for k in top if top.count(k) > 1)
        raise ValueError(f"{what}: query {query_id} lists {dup!r} more than once in its top {size}")
    return top


def _check_members(top: list[str], allowed: set[str], query_id: str, what: str, where: str) -> None:
    bad = [k for k in top if k not in allowed]
    if bad:
        raise ValueError(f"{what}: query {query_id} returns {bad[0]!r}, which is not in {where}")


# ----------------------------------------------------------------------------- CIRR


def _cirr_subset_answer(query: CIRQuery, ranking: Sequence[str], given: bool) -> list[str]:
    """Top-3 subset members: the subset ranking itself, or the full ranking filtered."""
    what = "CIRR recall_subset"
    members = set(query.subset or ()) - {query.reference}
    if given:
        top = _top(ranking, CIRR_SUBSET_SIZE, query.id, what)
        _check_members(top, members, query.id, what, "its subset (img_set minus the reference)")
        return top
    kept = [str(k) for k in ranking if str(k) in members]
    if len(set(kept)) < CIRR_SUBSET_SIZE:
        raise ValueError(
            f"{what}: the ranking of query {query.id} holds {len(set(kept))} of its subset "
            f"members, {CIRR_SUBSET_SIZE} are needed; pass the full ranking or subset_rankings"
        )
    return _top(kept, CIRR_SUBSET_SIZE, query.id, what)


def cirr_submission(
    rankings: Rankings, split: BenchmarkSplit, subset_rankings: Rankings | None = None
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Validated ``(recall, recall_subset)`` submission dicts for a CIRR split.

    Without ``subset_rankings`` the subset answer is the full ranking filtered to the
    query's subset, so ``rankings`` must then reach at least three subset members.
    """
    _check_benchmark(split, "cirr")
    _check_queries(rankings, split, "CIRR recall")
    if subset_rankings is not None:
        _check_queries(subset_rankings, split, "CIRR recall_subset")
    gallery = set(split.gallery)
    recall: dict[str, Any] = {"version": CIRR_VERSION, "metric": "recall"}
    subset: dict[str, Any] = {"version": CIRR_VERSION, "metric": "recall_subset"}
    for query in split.queries:
        top = _top(rankings[query.id], CIRR_RECALL_SIZE, query.id, "CIRR recall")
        _check_members(top, gallery, query.id, "CIRR recall", "the split gallery")
        if query.reference in top:
            raise ValueError(
                f"CIRR recall: query {query.id} returns its reference {query.reference!r}; "
                "CIRR rankings must exclude the reference image"
            )
        recall[query.id] = top
        source = subset_rankings if subset_rankings is not None else rankings
        subset[query.id] = _cirr_subset_answer(query, source[query.id], subset_rankings is not None)
    return recall, subset


def write_cirr_submission(
    rankings: Rankings,
    split: BenchmarkSplit,
    out_dir: str | Path,
    name: str = "opencir",
    subset_rankings: Rankings | None = None,
) -> tuple[Path, Path]:
    """Write ``recall_submission_<name>.json`` and ``recall_subset_submission_<name>.json``."""
    recall, subset = cirr_submission(rankings, split, subset_rankings)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = out / f"recall_submission_{name}.json", out / f"recall_subset_submission_{name}.json"
    write_json_atomic(paths[0], recall)
    write_json_atomic(paths[1], subset)
    return paths


def read_cirr_submission(path: str | Path) -> CIRRSubmission:
    """Read a CIRR submission file back (either metric)."""
    data = _read_json_object(path)
    version, metric = data.pop("version", None), data.pop("metric", None)
    if version is None or metric not in ("recall", "recall_subset"):
        raise ValueError(f"{path}: not a CIRR submission (needs 'version' and 'metric' keys)")
    return CIRRSubmission(str(version), str(metric), {k: list(v) for k, v in data.items()})


# ----------------------------------------------------------------------------- CIRCO


def circo_submission(rankings: Rankings, split: BenchmarkSplit) -> dict[str, list[int]]:
    """Validated CIRCO submission: query id → top-50 COCO image ids (integers)."""
    _check_benchmark(split, "circo")
    _check_queries(rankings, split, "CIRCO")
    gallery = set(split.gallery)
    out: dict[str, list[int]] = {}
    for query in split.queries:
        top = _top(rankings[query.id], CIRCO_SIZE, query.id, "CIRCO")
        _check_members(top, gallery, query.id, "CIRCO", "the gallery (COCO 2017 unlabeled)")
        out[query.id] = [int(k) for k in top]
    return out


def write_circo_submission(rankings: Rankings, split: BenchmarkSplit, path: str | Path) -> Path:
    """Validate and write the CIRCO test-server JSON to ``path``."""
    submission = circo_submission(rankings, split)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(path, submission)
    return path


def read_circo_submission(path: str | Path) -> dict[str, list[int]]:
    """Read a CIRCO submission file back."""
    return {k: [int(i) for i in v] for k, v in _read_json_object(path).items()}


# ----------------------------------------------------------------------------- files


def write_json_atomic(path: Path, data: Any) -> None:
    """Write JSON atomically (temp file beside ``path``, then rename)."""
    atomic_write(path, json.dumps(data).encode("utf-8"))


def _read_json_object(path: str | Path) -> dict[str, Any]:
    with Path(path).open(encoding="utf-8") as f:
        data = json.load(f)
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data
