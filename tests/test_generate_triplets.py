"""The triplet format: JSONL/Parquet round trips, manifests, and the trainer's loader."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from opencir.data.collections import CollectionSpec, open_collection
from opencir.data.triplets import (
    Triplet,
    open_triplets,
    read_triplets,
    write_manifest,
    write_triplets,
)
from tests.generate_fixtures import make_world

ROWS = [
    Triplet(
        "t1",
        "img000",
        "img001",
        "make it blue",
        {"writer": {"kind": "template"}, "seed": 0},
        {"strategy": "random", "reference_caption": "a red circle"},
    ),
    Triplet("t2", "img002", "img003", "replace the circle with a square", {"seed": 0}),
]


@pytest.mark.parametrize("suffix", ["jsonl", "parquet"])
def test_round_trip(tmp_path: Path, suffix: str) -> None:
    if suffix == "parquet":
        pytest.importorskip("pyarrow")
    path = write_triplets(ROWS, tmp_path / f"t.{suffix}")
    back = read_triplets(path)
    assert back == ROWS


def test_rows_need_reference_target_text(tmp_path: Path) -> None:
    path = tmp_path / "t.jsonl"
    path.write_text(json.dumps({"id": "x", "reference": "a", "text": "b"}) + "\n")
    with pytest.raises(ValueError, match=r"t.jsonl:1.*target"):
        read_triplets(path)
    with pytest.raises(ValueError, match="is the generate run finished"):
        read_triplets(tmp_path)


def test_open_triplets_resolves_keys_through_the_manifest(tmp_path: Path) -> None:
    world = make_world(tmp_path / "world")
    out = tmp_path / "out"
    write_triplets(ROWS, out / "triplets.jsonl")
    write_manifest(out, open_collection(world).describe())
    rows, load = open_triplets([out])
    assert [r.reference for r in rows] == ["img000", "img002"]
    assert load("img003").size == (32, 32)
    # the two folders move together: the relative path still resolves
    moved = tmp_path / "moved"
    moved.mkdir()
    (tmp_path / "world").rename(moved / "world")
    (tmp_path / "out").rename(moved / "out")
    rows, load = open_triplets([moved / "out" / "triplets.jsonl"])
    assert load("img001").size == (32, 32)


def test_open_triplets_from_two_sources_prefixes_keys(tmp_path: Path) -> None:
    for name in ("w1", "w2"):
        make_world(tmp_path / name)
        write_triplets(ROWS[:1], tmp_path / f"o{name}" / "triplets.jsonl")
        spec = CollectionSpec(str(tmp_path / name))
        write_manifest(tmp_path / f"o{name}", open_collection(spec).describe())
    rows, load = open_triplets([tmp_path / "ow1", tmp_path / "ow2"])
    assert [r.reference for r in rows] == ["0:img000", "1:img000"]
    assert load("1:img001").size == (32, 32)


def test_without_manifest_keys_are_paths_next_to_the_file(tmp_path: Path) -> None:
    make_world(tmp_path)
    rows = [Triplet("a", "images/img000.png", "images/img001.png", "x")]
    write_triplets(rows, tmp_path / "labelled.jsonl")
    triplets, load = open_triplets([tmp_path / "labelled.jsonl"])
    assert load(triplets[0].target).size == (32, 32)
