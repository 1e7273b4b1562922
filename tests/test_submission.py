"""CIRR and CIRCO test-server files: round trips and rejection of bad rankings."""

from __future__ import annotations

import json

import pytest

from opencir.eval.benchmark import BenchmarkSplit, CIRQuery
from opencir.eval.run import EvalRequest
from opencir.eval.submission import (
    CIRCO_SIZE,
    CIRR_RECALL_SIZE,
    circo_submission,
    read_circo_submission,
    read_cirr_submission,
    write_circo_submission,
    write_cirr_submission,
)

NAMES = [f"test1-{i}-0-img0" for i in range(60)]


def _no_image(key: str):
    raise AssertionError("submissions never load images")


def _cirr_split() -> BenchmarkSplit:
    queries = [
        CIRQuery(id=str(p), reference=NAMES[r], text="t", subset=tuple(NAMES[r + 1 : r + 6]))
        for p, r in ((101, 0), (102, 10))
    ]
    return BenchmarkSplit("cirr", "test1", NAMES, queries, _no_image, {}, exclude_reference=True)


def _cirr_rankings(split: BenchmarkSplit) -> dict[str, list[str]]:
    """Full rankings, reference removed, in reverse gallery order."""
    return {q.id: [n for n in reversed(NAMES) if n != q.reference] for q in split.queries}


def test_cirr_round_trip(tmp_path):
    split = _cirr_split()
    rankings = _cirr_rankings(split)
    recall_path, subset_path = write_cirr_submission(rankings, split, tmp_path, name="m")
    assert recall_path.name == "recall_submission_m.json"
    recall, subset = read_cirr_submission(recall_path), read_cirr_submission(subset_path)
    assert (recall.version, recall.metric) == ("rc2", "recall")
    assert (subset.version, subset.metric) == ("rc2", "recall_subset")
    assert recall.predictions["101"] == rankings["101"][:CIRR_RECALL_SIZE]
    assert subset.predictions["101"] == [NAMES[5], NAMES[4], NAMES[3]]
    assert subset.predictions["102"] == [NAMES[15], NAMES[14], NAMES[13]]
    raw = json.loads(recall_path.read_text())
    assert set(raw) == {"version", "metric", "101", "102"}
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "recall_submission_m.json",
        "recall_subset_submission_m.json",
    ]


def test_cirr_explicit_subset_rankings(tmp_path):
    split = _cirr_split()
    subsets = {"101": [NAMES[2], NAMES[1], NAMES[3]], "102": [NAMES[11], NAMES[12], NAMES[13]]}
    _, path = write_cirr_submission(_cirr_rankings(split), split, tmp_path, subset_rankings=subsets)
    assert read_cirr_submission(path).predictions == subsets
    subsets["102"] = [NAMES[11], NAMES[12], NAMES[30]]
    with pytest.raises(ValueError, match="not in its subset"):
        write_cirr_submission(_cirr_rankings(split), split, tmp_path, subset_rankings=subsets)


@pytest.mark.parametrize(
    ("corrupt", "message"),
    [
        (lambda r: r.pop("102"), "1 missing query id.*102"),
        (lambda r: r.update({"999": r["101"]}), "1 unknown query id.*999"),
        (lambda r: r.update({"101": r["101"][:49]}), "has 49 results; the server needs 50"),
        (lambda r: r["101"].insert(3, r["101"][0]), "more than once"),
        (lambda r: r["101"].insert(0, "dev-0-0-img0"), "'dev-0-0-img0', which is not in"),
        (lambda r: r["101"].insert(0, NAMES[0]), "returns its reference"),
        (lambda r: r.update({"101": r["101"][:50]}), "holds 0 of its subset members"),
    ],
)
def test_cirr_rejects_bad_rankings(tmp_path, corrupt, message):
    split = _cirr_split()
    rankings = _cirr_rankings(split)
    corrupt(rankings)
    with pytest.raises(ValueError, match=message):
        write_cirr_submission(rankings, split, tmp_path / "out")
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def _circo_split() -> BenchmarkSplit:
    gallery = [str(i) for i in range(100, 160)]
    queries = [CIRQuery(id=str(i), reference=gallery[i], text="t") for i in range(3)]
    return BenchmarkSplit("circo", "test", gallery, queries, _no_image, {}, ks=(5, 10, 25, 50))


def test_circo_round_trip(tmp_path):
    split = _circo_split()
    rankings = {q.id: list(split.gallery)[::-1] for q in split.queries}
    path = write_circo_submission(rankings, split, tmp_path / "sub" / "circo_test.json")
    back = read_circo_submission(path)
    assert set(back) == {"0", "1", "2"}
    assert back["0"] == list(range(159, 159 - CIRCO_SIZE, -1))
    assert all(isinstance(i, int) for i in back["2"])
    assert [p.name for p in path.parent.iterdir()] == ["circo_test.json"]


def test_circo_rejects_bad_rankings(tmp_path):
    split = _circo_split()
    good = {q.id: list(split.gallery) for q in split.queries}
    with pytest.raises(ValueError, match="missing query id"):
        circo_submission({"0": good["0"]}, split)
    with pytest.raises(ValueError, match="has 10 results"):
        circo_submission({**good, "1": good["1"][:10]}, split)
    with pytest.raises(ValueError, match="'7', which is not in the gallery"):
        circo_submission({**good, "2": ["7", *good["2"]]}, split)
    with pytest.raises(ValueError, match="more than once"):
        circo_submission({**good, "2": ["100", *good["2"]]}, split)
    with pytest.raises(ValueError, match="expected a circo split"):
        circo_submission(good, _cirr_split())
    target = tmp_path / "circo.json"
    with pytest.raises(ValueError):
        write_circo_submission({}, split, target)
    assert not target.exists() and list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("benchmark", ["fashioniq", "genecis", "shapescir"])
def test_a_request_for_a_submission_without_test_server_is_refused(benchmark):
    with pytest.raises(ValueError, match=f"{benchmark!r} has no test server"):
        EvalRequest(benchmark, "/data/unused", "test", submission_dir="sub")
    assert EvalRequest(benchmark, "/data/unused", "test").submission_dir is None
    assert EvalRequest("CIRCO", "/data/unused", "test", submission_dir="sub").submission_dir
