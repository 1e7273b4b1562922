"""How good is a change writer? Its accuracy on a miniature world's held-out pairs.

The pairs are a world's queries (``test`` by default: images no writer was tuned on) whose
target differs from the reference in one attribute of one object — the metadata
(``attributes.objects``) says which. Each writer sees the two images' alt texts, as
``generate`` gives them, and its answer is judged from that metadata alone:

* **passes the filters**: :func:`~opencir.generate.validation.validate_change` accepts it
  (≤ 12 plain words, an instruction rather than a description of both images);
* **names the object**: one of the changed object's values before the change appears in it
  (its shape, colour, size or position), so a reader can tell which object to change;
* **names the new value**: the changed attribute's new value appears in it *after* that
  first mention of the object (``large`` also as ``larger``/``bigger``/``big``, ``small`` as
  ``smaller``/``tiny``, ``center`` as ``centre``/``middle``), so "make the red circle blue"
  counts and "change the blue circle to a circle" or "add a blue circle" do not.

An answer is *correct* when all three hold. Accuracy and pass rate are over all pairs, with
95% Wilson intervals; triplets/s counts passing answers per second of writing (the model is
loaded and asked once before the clock starts).
"""

from __future__ import annotations

import asyncio
import math
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from opencir.data.worlds.common import iter_jsonl, queries_file
from opencir.generate.jobs import ImageJob, Outcome, PairJob
from opencir.generate.sampling import Pair
from opencir.generate.writers import ChangeWriter, WriterConfig, build_writer

SYNONYMS = {
    "large": ("large", "larger", "big", "bigger"),
    "small": ("small", "smaller", "tiny"),
    "center": ("center", "centre", "middle"),
}


@dataclass(frozen=True)
class AttributeChange:
    """One object's one attribute changed: the object before, the field and its new value."""

    field: str
    before: Mapping[str, str]
    new_value: str


def _objects(meta: Mapping[str, Any]) -> list[dict[str, str]]:
    attributes = meta.get("attributes") or {}
    objects = attributes.get("objects", [attributes]) if isinstance(attributes, dict) else []
    return [{k: str(v) for k, v in obj.items()} for obj in objects if isinstance(obj, dict)]


def single_attribute_change(
    reference: Mapping[str, Any], target: Mapping[str, Any]
) -> AttributeChange | None:
    """The change between two images' metadata when it is one attribute of one object."""
    before, after = _objects(reference), _objects(target)
    gone = [obj for obj in before if obj not in after]
    new = [obj for obj in after if obj not in before]
    if (
        len(gone) != 1
        or len(new) != 1
        or len(before) != len(after)
        or gone[0].keys() != new[0].keys()
    ):
        return None
    changed = [name for name in gone[0] if gone[0][name] != new[0][name]]
    if len(changed) != 1:
        return None
    return AttributeChange(changed[0], gone[0], new[0][changed[0]])


def _words(text: str) -> list[str]:
    return re.findall(r"[a-z]+", text.lower())


def _positions(words: Sequence[str], value: str) -> list[int]:
    """Where (word index) ``value`` or one of its :data:`SYNONYMS` starts in ``words``."""
    found = []
    for form in SYNONYMS.get(value, (value,)):
        phrase = _words(form)
        width = len(phrase)
        found += [i for i in range(len(words) - width + 1) if list(words[i : i + width]) == phrase]
    return sorted(found)


@dataclass(frozen=True)
class Judgement:
    """One answer and what the metadata says of it."""

    reference: str
    target: str
    field: str
    status: str
    text: str
    names_value: bool = False
    names_object: bool = False

    @property
    def correct(self) -> bool:
        return self.status == "ok" and self.names_value and self.names_object


def judge(job: PairJob, change: AttributeChange, outcome: Outcome) -> Judgement:
    """Judge one writer outcome against the pair's known change."""
    pair = job.pair
    if outcome.status != "ok" or outcome.text is None:
        detail = f"{outcome.status}:{outcome.reason}: {outcome.detail}"
        return Judgement(pair.reference, pair.target, change.field, outcome.status, detail)
    words = _words(outcome.text)
    mentions = [i for value in change.before.values() for i in _positions(words, value)]
    first = min(mentions, default=None)
    after = first is not None and any(i > first for i in _positions(words, change.new_value))
    return Judgement(
        pair.reference,
        pair.target,
        change.field,
        "ok",
        outcome.text,
        names_value=after,
        names_object=first is not None,
    )


def wilson(successes: int, total: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval of a proportion."""
    if total == 0:
        return (0.0, 0.0)
    p = successes / total
    centre = (p + z * z / (2 * total)) / (1 + z * z / total)
    half = z * math.sqrt(p * (1 - p) / total + z * z / (4 * total * total)) / (1 + z * z / total)
    return (max(0.0, centre - half), min(1.0, centre + half))


@dataclass
class WriterReport:
    """A writer's accuracy, filter pass rate and speed on a world's held-out pairs."""

    world: str
    split: str
    writer: dict[str, Any]
    seconds: float
    judgements: list[Judgement] = field(default_factory=list)

    @property
    def pairs(self) -> int:
        return len(self.judgements)

    @property
    def passed(self) -> int:
        return sum(j.status == "ok" for j in self.judgements)

    @property
    def correct(self) -> int:
        return sum(j.correct for j in self.judgements)

    @property
    def triplets_per_s(self) -> float:
        return self.passed / self.seconds if self.seconds > 0 else 0.0

    def by_field(self) -> dict[str, tuple[int, int]]:
        """Field → (correct, pairs)."""
        counts: dict[str, tuple[int, int]] = {}
        for j in self.judgements:
            right, total = counts.get(j.field, (0, 0))
            counts[j.field] = (right + j.correct, total + 1)
        return counts

    def summary(self) -> str:
        acc, passed = wilson(self.correct, self.pairs), wilson(self.passed, self.pairs)
        fields = ", ".join(f"{k} {c}/{n}" for k, (c, n) in sorted(self.by_field().items()))
        return (
            f"writer {self.writer.get('kind')} on {self.pairs} {self.split} pairs of {self.world}: "
            f"accuracy {self.correct}/{self.pairs} = {self.correct / max(1, self.pairs):.1%} "
            f"[{acc[0]:.1%}, {acc[1]:.1%}]; filter pass {self.passed / max(1, self.pairs):.1%} "
            f"[{passed[0]:.1%}, {passed[1]:.1%}]; {self.triplets_per_s:.2f} triplets/s "
            f"({fields})"
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "world": self.world,
            "split": self.split,
            "writer": self.writer,
            "pairs": self.pairs,
            "passed": self.passed,
            "correct": self.correct,
            "accuracy": self.correct / max(1, self.pairs),
            "accuracy_ci95": wilson(self.correct, self.pairs),
            "pass_rate": self.passed / max(1, self.pairs),
            "pass_rate_ci95": wilson(self.passed, self.pairs),
            "triplets_per_s": self.triplets_per_s,
            "by_field": self.by_field(),
            "answers": [{**vars(j), "correct": j.correct} for j in self.judgements],
        }


def held_out_pairs(
    root: str | Path, split: str = "test", limit: int | None = None
) -> list[tuple[PairJob, AttributeChange]]:
    """The world's query pairs (first target each) that differ in one attribute of one object."""
    root = Path(root)
    meta = {row["id"]: row for row in iter_jsonl(root / "images.jsonl")}
    found = []
    for query in iter_jsonl(root / queries_file(split)):
        reference, target = meta[query["reference"]], meta[query["targets"][0]]
        change = single_attribute_change(reference, target)
        if change is None:
            continue
        jobs = [ImageJob(row["id"], row) for row in (reference, target)]
        pair = Pair(reference["id"], target["id"], "world-query")
        captions = (reference.get("alt_text"), target.get("alt_text"))
        found.append((PairJob(pair, *jobs, *captions), change))
        if limit is not None and len(found) >= limit:
            break
    if not found:
        raise ValueError(f"the {split} queries of {root} hold no one-attribute pairs")
    return found


async def _timed_writes(writer: ChangeWriter, jobs: Sequence[PairJob]) -> tuple[list, float]:
    try:
        await writer.write_many(jobs[:1])  # load the model / open the connection first
        started = time.perf_counter()
        outcomes = await writer.write_many(jobs)
        return outcomes, time.perf_counter() - started
    finally:
        await writer.aclose()


def evaluate_writer(
    root: str | Path, config: WriterConfig, split: str = "test", limit: int | None = None
) -> WriterReport:
    """Ask the writer of ``config`` for every held-out pair of the world at ``root``."""
    pairs = held_out_pairs(root, split, limit)
    writer = build_writer(config)
    jobs = [job for job, _ in pairs]
    outcomes, seconds = asyncio.run(_timed_writes(writer, jobs))
    judgements = [
        judge(job, change, outcome) for (job, change), outcome in zip(pairs, outcomes, strict=True)
    ]
    return WriterReport(str(root), split, writer.provenance(), seconds, judgements)
