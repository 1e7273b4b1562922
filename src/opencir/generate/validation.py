"""Clean and check a model's change text: short, plain words, an instruction, not two captions.

Models wrap answers in quotes, prefix them ("Difference: ..."), or describe both images
("Image A shows a dog while image B shows a cat") instead of saying what to change, which the
seed paper names as the main failure on dissimilar pairs. :func:`validate_change` returns the
cleaned text or a :class:`Rejection` with a machine-readable reason.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

REASONS = ("empty", "too_long", "special_characters", "describes_both", "copies_caption")

_PREFIX = re.compile(
    r"^\s*(?:difference|answer|reformulation(?: text)?|change|instruction|output|response)\s*:\s*",
    re.IGNORECASE,
)
_QUOTES = "\"'“”‘’`«»"
_ALLOWED = re.compile(r"^[^\W_]+(?:[\s,.;'’\-]+[^\W_]+)*[.!]?$")
_BOTH = re.compile(
    r"\b(?:image|picture|photo|caption)\s*(?:a|b|1|2|one|two)\b.*"
    r"\b(?:image|picture|photo|caption)\s*(?:a|b|1|2|one|two)\b"
    r"|\bboth (?:images|pictures|photos|captions)\b"
    r"|\b(?:first|second) (?:image|picture|photo|caption)\b"
    r"|^(?:the )?(?:image|picture|photo) (?:features|shows|depicts)\b",
    re.IGNORECASE,
)


@dataclass(frozen=True)
class ValidationConfig:
    """What a change text must satisfy."""

    max_words: int = 12
    min_words: int = 1

    def __post_init__(self) -> None:
        if not 1 <= self.min_words <= self.max_words:
            raise ValueError(
                f"need 1 <= min_words <= max_words, got {self.min_words}, {self.max_words}"
            )


@dataclass(frozen=True)
class Rejection:
    """Why a change text was refused, and the text that was."""

    reason: str
    text: str


def clean_answer(raw: str) -> str:
    """First non-empty line, without a "Difference:"-style prefix, quotes or outer spaces."""
    lines = [line.strip() for line in raw.strip().splitlines() if line.strip()]
    text = lines[0] if lines else ""
    for _ in range(2):
        text = _PREFIX.sub("", text).strip().strip(_QUOTES).strip()
    return re.sub(r"\s+", " ", text).rstrip(".! ").strip()


def validate_change(
    raw: str, config: ValidationConfig = ValidationConfig(), captions: tuple[str, ...] = ()
) -> str | Rejection:
    """The cleaned change text, or a :class:`Rejection` saying why it is unusable."""
    text = clean_answer(raw)
    words = text.split()
    if len(words) < config.min_words:
        return Rejection("empty", raw)
    if _BOTH.search(text):  # the most specific diagnosis first
        return Rejection("describes_both", text)
    if len(words) > config.max_words:
        return Rejection("too_long", text)
    if not _ALLOWED.match(text):
        return Rejection("special_characters", text)
    if any(_normal(text) == _normal(c) for c in captions if c):
        return Rejection("copies_caption", text)
    return text


def _normal(text: str) -> str:
    return " ".join(re.findall(r"[^\W_]+", text.lower()))
