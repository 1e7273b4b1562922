"""Seed data for tuning a change writer: (caption A, caption B, change text) with provenance.

S1 tunes its writer on seed examples before it writes at scale. Any triplet folder makes
seeds: the answers of an OpenAI-compatible LLM (``opencir generate --writer llm``), the
template writer's texts on a world's train side (``--writer template``), or a world's
ground-truth triplets (``opencir world triplets``). Captions come from the triplet row
(``reference_caption``/``target_caption``, which ``generate`` records) or else from the image
collection's own caption field (``alt_text``, ``caption``, ...). Each seed records where it
came from: ``kind`` (``llm``, ``template``, ``ground-truth``, ...), the triplet id and file,
and the generation run's writer.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from opencir.atomic import atomic_write
from opencir.data.collections import get_field, read_rows
from opencir.data.triplets import Triplet, jsonl_bytes, read_triplets, triplet_file, triplet_source
from opencir.generate.captioners import SIDECAR_FIELDS
from opencir.generate.writer_eval import single_attribute_change

SEED_FIELDS = ("caption_a", "caption_b", "text")


@dataclass(frozen=True)
class WriterSeed:
    """One example for the writer: the two captions and the change text it should write."""

    caption_a: str
    caption_b: str
    text: str
    provenance: Mapping[str, Any] = field(default_factory=dict)

    def to_row(self) -> dict[str, Any]:
        return {
            "caption_a": self.caption_a,
            "caption_b": self.caption_b,
            "text": self.text,
            "provenance": dict(self.provenance),
        }


def seed_kind(triplet: Triplet) -> str:
    """Who wrote a triplet's text: ``ground-truth``, or the generating writer's kind."""
    provenance = triplet.provenance
    if provenance.get("source") == "ground-truth":
        return "ground-truth"
    writer = provenance.get("writer")
    return str(writer.get("kind", "unknown")) if isinstance(writer, Mapping) else "unknown"


def seeds_from_triplets(
    path: str | Path, caption_field: str = "auto", one_change: bool = False
) -> list[WriterSeed]:
    """The seeds of one triplet file or folder; triplets without two captions are skipped.

    ``one_change``: keep only the triplets whose two images differ in one attribute of one
    object, as their collection's ``attributes`` metadata says (the pairs ``opencir writer
    eval`` asks about), each seed's provenance naming the changed ``attribute``; a
    collection without such metadata is an error.
    """
    file = triplet_file(path)
    triplets = read_triplets(file)
    metadata = _metadata_if_needed(file, triplets, one_change)
    names = SIDECAR_FIELDS if caption_field == "auto" else (caption_field,)
    kept = (
        _one_change_triplets(file, triplets, metadata)
        if one_change
        else [(t, None) for t in triplets]
    )
    seeds = []
    for triplet, attribute in kept:
        captions = [
            triplet.extra.get(f"{side}_caption") or _caption(metadata.get(key, {}), names)
            for side, key in (("reference", triplet.reference), ("target", triplet.target))
        ]
        if all(captions):
            provenance = _provenance(triplet, file)
            if attribute is not None:
                provenance["attribute"] = attribute
            seeds.append(WriterSeed(*captions, triplet.text, provenance))
    if not seeds:
        raise ValueError(
            f"{file}: no triplet has two captions (looked in reference_caption/target_caption "
            f"and the images' {', '.join(names)} fields)"
        )
    return seeds


def _metadata_if_needed(
    file: Path, triplets: Sequence[Triplet], always: bool = False
) -> dict[str, Mapping[str, Any]]:
    """Image key → metadata of the triplets' collection, read only when a caption is missing
    (or ``always``)."""
    if not always and all(
        "reference_caption" in t.extra and "target_caption" in t.extra for t in triplets
    ):
        return {}
    return {item.key: item.meta for item in triplet_source(file).items()}


def _one_change_triplets(
    file: Path, triplets: Sequence[Triplet], metadata: Mapping[str, Mapping[str, Any]]
) -> list[tuple[Triplet, str]]:
    """The triplets whose images differ in one attribute of one object, with that attribute."""
    if not any("attributes" in meta for meta in metadata.values()):
        raise ValueError(
            f"{file}: one-change seeds need the images' attributes metadata, "
            "which this collection lacks"
        )
    kept = []
    for t in triplets:
        if t.reference in metadata and t.target in metadata:
            change = single_attribute_change(metadata[t.reference], metadata[t.target])
            if change is not None:
                kept.append((t, change.field))
    return kept


def _caption(meta: Mapping[str, Any], names: Sequence[str]) -> str | None:
    for name in names:
        value = get_field(meta, name)
        if isinstance(value, str) and value.strip():
            return value.strip()
    return None


def _provenance(triplet: Triplet, file: Path) -> dict[str, Any]:
    record = {"kind": seed_kind(triplet), "triplet": triplet.id, "file": str(file)}
    writer = triplet.provenance.get("writer")
    if isinstance(writer, Mapping):
        record["writer"] = dict(writer)
    return record


def unique_seeds(seeds: Iterable[WriterSeed]) -> list[WriterSeed]:
    """The seeds less repeats of the same (caption A, caption B, text), first one kept.

    A world's query with several targets of the same caption gives one seed per target.
    """
    seen: set[tuple[str, str, str]] = set()
    kept = []
    for seed in seeds:
        key = (seed.caption_a, seed.caption_b, seed.text)
        if key not in seen:
            seen.add(key)
            kept.append(seed)
    return kept


def balance_seeds(seeds: Sequence[WriterSeed]) -> list[WriterSeed]:
    """Each changed attribute's seeds repeated in turn until it has as many as the commonest.

    The attribute is the one the seed's provenance names (``one_change`` records it), so a
    kind of change that the sampled pairs rarely hold (an emoji's form) is not drowned by a
    common one (its skin tone).
    """
    groups: dict[str, list[WriterSeed]] = {}
    for seed in seeds:
        attribute = seed.provenance.get("attribute")
        if attribute is None:
            raise ValueError(
                "balancing needs one-change seeds (their provenance names the changed attribute)"
            )
        groups.setdefault(str(attribute), []).append(seed)
    most = max((len(group) for group in groups.values()), default=0)
    return [group[i % len(group)] for group in groups.values() for i in range(most)]


def write_seeds(seeds: Iterable[WriterSeed], path: str | Path) -> Path:
    """Write seeds as JSONL, atomically."""
    return atomic_write(Path(path), jsonl_bytes(seed.to_row() for seed in seeds))


def read_seeds(paths: Sequence[str | Path]) -> list[WriterSeed]:
    """Seeds of JSONL files; a row lacking a caption or the text is an error naming it."""
    seeds = []
    for path in paths:
        if not Path(path).is_file():
            raise FileNotFoundError(f"writer seed file {path} does not exist")
        for number, row in enumerate(read_rows(Path(path)), 1):
            where = f"{path}:{number}"
            missing = [name for name in SEED_FIELDS if not isinstance(row.get(name), str)]
            if missing:
                raise ValueError(f"{where}: a writer seed needs {', '.join(missing)} (text)")
            values = [row[name] for name in SEED_FIELDS]
            seeds.append(WriterSeed(*values, row.get("provenance") or {}))
    if not seeds:
        raise ValueError(f"no writer seeds in {', '.join(map(str, paths))}")
    return seeds
