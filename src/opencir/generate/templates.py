"""The template writer's grammar: terse, generator-style change texts without any model.

This is the template baseline of TransAgg (seed 002, Table IV) made concrete. From two
attribute sets it names what changed ("change the red circle to blue", "replace the cat with
a dog", "move the small square to the top right", "remove the green star"); from two
captions it takes a word diff ("change the red circle to blue", "replace X with Y", "add
Z"). ``variant`` (derived from the pair) picks among a few fixed phrasings.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Mapping, Sequence
from typing import Any

NOUN_FIELDS = (
    "shape",
    "family",
    "kind",
    "object",
    "category",
    "class",
    "type",
    "species",
    "name",
)
PLACE_FIELDS = ("position", "location", "place")
ADJECTIVE_FIELDS = ("size", "age", "condition", "pattern", "texture", "material", "colour", "color")
STOP_WORDS = frozenset(
    {"a", "an", "the", "and", "at", "in", "on", "of", "with", "to", "is", "are", "its", "it"}
    | {"this", "that", "there"}
)


def words(value: Any) -> str:
    """An attribute value as words: ``"top_left"`` → ``"top left"``."""
    return "none" if value is None else str(value).replace("_", " ").strip()


def article(phrase: str) -> str:
    return ("an " if phrase[:1].lower() in "aeiou" else "a ") + phrase


def _pick(options: Sequence[str], variant: int) -> str:
    return options[variant % len(options)]


# ----------------------------------------------------------------------------- objects


def _noun_field(obj: Mapping[str, Any]) -> str | None:
    return next((f for f in NOUN_FIELDS if f in obj), None)


def _adjective_fields(obj: Mapping[str, Any]) -> list[str]:
    known = [f for f in ADJECTIVE_FIELDS if f in obj]
    others = [f for f in obj if f not in known and f not in NOUN_FIELDS and f not in PLACE_FIELDS]
    return known + others


def object_phrase(obj: Mapping[str, Any], adjectives: Sequence[str] | None = None) -> str:
    """``{"size": "large", "colour": "red", "shape": "circle"}`` → ``"large red circle"``."""
    fields = _adjective_fields(obj) if adjectives is None else adjectives
    noun = _noun_field(obj)
    parts = [words(obj[f]) for f in fields if f in obj] + [words(obj[noun]) if noun else "object"]
    return " ".join(p for p in parts if p)


def _place(obj: Mapping[str, Any]) -> str | None:
    field = next((f for f in PLACE_FIELDS if f in obj), None)
    return words(obj[field]) if field else None


def _short_name(obj: Mapping[str, Any]) -> str:
    """The object with its colour-like adjective only ("red circle"), as people name it."""
    colour = [f for f in ("colour", "color") if f in obj]
    return object_phrase(obj, colour or _adjective_fields(obj)[:1])


def object_change(old: Mapping[str, Any], new: Mapping[str, Any], variant: int) -> str:
    """One clause for an object that changed some of its fields."""
    changed = [f for f in new if old.get(f) != new.get(f)]
    name = _short_name(old)
    noun = _noun_field(old)
    places = [f for f in changed if f in PLACE_FIELDS]
    adjectives = [f for f in changed if f not in PLACE_FIELDS and f != noun]
    clause = ""
    if noun in changed:
        template = _pick(("replace the {a} with {b}", "turn the {a} into {b}"), variant)
        clause = template.format(
            a=name, b=article(object_phrase(new, [f for f in adjectives if f in new]))
        )
    elif adjectives:
        value = " ".join(words(new[f]) for f in adjectives)
        clause = _pick(("change the {a} to {b}", "make the {a} {b}"), variant).format(
            a=name, b=value
        )
    if places:
        where = _place(new)
        clause = (
            f"{clause} and move it to the {where}" if clause else f"move the {name} to the {where}"
        )
    return clause


def _similarity(a: Mapping[str, Any], b: Mapping[str, Any]) -> int:
    noun = _noun_field(a)
    same = sum(1 for f in a if f in b and a[f] == b[f])
    return same + (1 if noun and a.get(noun) == b.get(noun) else 0)


def object_list_changes(
    old: Sequence[Mapping[str, Any]], new: Sequence[Mapping[str, Any]], variant: int
) -> list[str]:
    """Clauses turning one list of objects into another: changes, removals, additions."""
    left = [o for o in old]
    right = [o for o in new]
    for obj in list(left):  # objects present on both sides are not mentioned
        if obj in right:
            left.remove(obj)
            right.remove(obj)
    clauses: list[str] = []
    while left and right:
        i, j = max(
            ((i, j) for i in range(len(left)) for j in range(len(right))),
            key=lambda ij: _similarity(left[ij[0]], right[ij[1]]),
        )
        if _similarity(left[i], right[j]) == 0:
            break
        clauses.append(object_change(left.pop(i), right.pop(j), variant))
    clauses += [f"remove the {_short_name(o)}" for o in left]
    for obj in right:
        place = _place(obj)
        clauses.append(f"add {article(object_phrase(obj))}" + (f" at the {place}" if place else ""))
    return clauses


# ----------------------------------------------------------------------------- flat attributes


def flat_changes(old: Mapping[str, Any], new: Mapping[str, Any], variant: int) -> list[str]:
    """Clauses for scalar attributes that differ (nouns first: they matter most)."""
    changed = [f for f in new if not isinstance(new[f], (list, dict)) and old.get(f) != new[f]]
    noun = _noun_field(new)
    subject = words(new[noun]) if noun and noun not in changed else None
    clauses = []
    for field in sorted(changed, key=lambda f: (f not in NOUN_FIELDS, f)):
        a, b = words(old.get(field)), words(new[field])
        if field in NOUN_FIELDS:
            clauses.append(
                _pick(("replace the {a} with {b}", "turn the {a} into {b}"), variant).format(
                    a=a, b=article(b)
                )
            )
        elif field in ADJECTIVE_FIELDS and subject:
            clauses.append(f"make the {subject} {b}")
        else:
            clauses.append(f"change the {words(field)} from {a} to {b}")
    return clauses


def attribute_changes(old: Mapping[str, Any], new: Mapping[str, Any], variant: int) -> list[str]:
    """Clauses for two attribute sets: lists of objects are matched, scalars compared."""
    clauses = []
    for field in new:
        a, b = old.get(field), new[field]
        if (
            isinstance(b, list)
            and isinstance(a, list)
            and all(isinstance(o, Mapping) for o in a + b)
        ):
            clauses += object_list_changes(a, b, variant)
    return clauses + flat_changes(old, new, variant)


# ----------------------------------------------------------------------------- captions


def _content_words(text: str) -> list[str]:
    tokens = re.findall(r"[^\W_]+(?:['’-][^\W_]+)*", text.lower())
    return [t for t in tokens if t not in STOP_WORDS]


def caption_changes(old: str, new: str, variant: int, max_segment: int = 5) -> list[str]:
    """Clauses from a word diff of two captions ("change the red circle to blue")."""
    a, b = _content_words(old), _content_words(new)
    matcher = difflib.SequenceMatcher(a=a, b=b, autojunk=False)
    clauses = []
    for op, i1, i2, j1, j2 in matcher.get_opcodes():
        gone, came = a[i1:i2][:max_segment], b[j1:j2][:max_segment]
        if op == "replace" and gone and came:
            after = a[i2] if i2 < len(a) and j2 < len(b) and a[i2] == b[j2] else ""
            if after and len(gone) <= 2:
                template = _pick(("change the {a} {n} to {b}", "make the {a} {n} {b}"), variant)
                clauses.append(template.format(a=" ".join(gone), n=after, b=" ".join(came)))
            else:
                clauses.append(f"replace {' '.join(gone)} with {' '.join(came)}")
        elif came and op in ("insert", "replace"):
            clauses.append(f"add {' '.join(came)}")
        elif gone and op in ("delete", "replace"):
            clauses.append(f"remove {' '.join(gone)}")
    return clauses


def _fit(clause: str, max_words: int) -> str:
    """The longest prefix of a compound clause ("A and B") that fits, cut only at "and"."""
    parts = clause.split(" and ")
    for n in range(len(parts), 0, -1):
        text = " and ".join(parts[:n])
        if len(text.split()) <= max_words:
            return text
    return " ".join(clause.split()[:max_words])  # a single over-long phrase: rare


def join_clauses(clauses: Sequence[str], max_words: int) -> str:
    """As many whole clauses as fit in ``max_words``, joined with "and"."""
    text = ""
    for clause in clauses:
        candidate = f"{text} and {clause}" if text else clause
        if len(candidate.split()) > max_words:
            break
        text = candidate
    if not text and clauses:
        text = _fit(clauses[0], max_words)
    return text
