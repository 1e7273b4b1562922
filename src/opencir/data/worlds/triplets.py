"""Ground-truth triplets from a world's queries (the supervised ceiling's training data)."""

from __future__ import annotations

from pathlib import Path

from opencir.data.collections import CollectionSpec
from opencir.data.triplets import Triplet, write_manifest, write_triplets
from opencir.data.worlds.common import iter_jsonl, queries_file, read_world_info


def export_world_triplets(root: str | Path, split: str, out: str | Path) -> Path:
    """Write ``queries.<split>.jsonl`` of the world at ``root`` as a triplet folder.

    Each query becomes one triplet per ground-truth target, with the query's own text, so
    training on it is supervised CIR. Keys resolve through the world's ``images.jsonl``.
    """
    root, out = Path(root), Path(out)
    info = read_world_info(root)
    path = root / queries_file(split)
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: the world at {root} has no {split} queries")
    provenance = {"source": "ground-truth", "world": info.world, "seed": info.seed, "split": split}
    triplets = [
        Triplet(f"{row['id']}#{n}", row["reference"], target, row["text"], provenance)
        for row in iter_jsonl(path)
        for n, target in enumerate(row["targets"])
    ]
    if not triplets:
        raise ValueError(f"{path} holds no queries with targets")
    out.mkdir(parents=True, exist_ok=True)
    write_triplets(triplets, out / "triplets.jsonl")
    spec = CollectionSpec(path=str((root / "images.jsonl").resolve()))
    write_manifest(out, spec.to_dict(), ground_truth=True, count=len(triplets))
    return out
