"""How the miniature worlds word their modification texts.

Two registers, kept apart on purpose:

* ``plain`` — one terse canonical sentence per kind ("change the red circle to blue"). This is
  what a template triplet generator writes; the val queries use it so model selection never
  sees the test phrasings.
* the *test styles* — ``casual``, ``request``, ``fragment`` and ``target`` (a description of
  the wanted image) — several human-like templates each, with synonyms for colours, shapes,
  sizes, places and skin tones. None of them can match :data:`TEMPLATE_WRITER_PATTERNS`, the
  shapes of sentence a template writer produces, so a model cannot score by pattern-matching
  its training texts.

Worlds build the slot values (``obj``, ``new``, ``where``, ...) with :func:`word` and
:func:`place`, then call :func:`paraphrase`.
"""

from __future__ import annotations

import random
import re
import string
from collections.abc import Mapping, Sequence

PLAIN = "plain"
TEST_STYLES = ("casual", "request", "fragment", "target")

# Words a test text may use instead of the canonical one (the canonical word stays possible).
SYNONYMS: dict[str, tuple[str, ...]] = {
    # colours
    "red": ("crimson", "scarlet", "cherry-red"),
    "orange": ("tangerine", "amber", "bright orange"),
    "yellow": ("golden", "lemon-yellow", "mustard"),
    "green": ("emerald", "grass-green", "leafy green"),
    "blue": ("navy", "cobalt", "royal blue"),
    "purple": ("violet", "plum", "lilac"),
    "pink": ("rose", "bubblegum pink", "rosy"),
    "brown": ("chocolate", "chestnut", "coffee-coloured"),
    "black": ("jet-black", "coal-black", "pitch-black"),
    "white": ("snow-white", "ivory", "pure white"),
    # shapes
    "circle": ("disc", "round shape", "dot"),
    "square": ("box", "block", "four-sided block"),
    "triangle": ("triangular shape", "three-sided shape", "wedge"),
    "star": ("five-pointed star", "star shape", "starburst"),
    "hexagon": ("six-sided shape", "hex", "honeycomb shape"),
    "diamond": ("rhombus", "lozenge", "diamond shape"),
    # sizes and size changes
    "small": ("little", "tiny", "smallish"),
    "large": ("big", "huge", "chunky"),
    "bigger": ("larger", "a lot bigger", "bigger"),
    "smaller": ("tinier", "a good deal smaller", "smaller"),
    # emoji attributes
    "male": ("masculine", "male"),
    "female": ("feminine", "female"),
    "gender-neutral": ("neutral", "unisex", "non-gendered"),
}

# Place phrases per 3x3 cell: the first is canonical (alt text, plain style).
PLACES: dict[str, tuple[str, ...]] = {
    "top left": ("at the top left", "in the upper left corner", "up in the top-left corner"),
    "top": ("at the top", "at the top middle", "up top in the middle"),
    "top right": ("at the top right", "in the upper right corner", "up in the top-right corner"),
    "left": ("on the left", "on the middle of the left side", "halfway down the left edge"),
    "center": ("in the center", "in the middle", "right in the centre"),
    "right": ("on the right", "on the middle of the right side", "halfway down the right edge"),
    "bottom left": ("at the bottom left", "in the lower left corner", "down in the bottom-left"),
    "bottom": ("at the bottom", "at the bottom middle", "down at the bottom, centred"),
    "bottom right": ("at the bottom right", "in the lower right corner", "down in the corner"),
}

# "All the way" moves along a row or column to an edge (only said when the edge cell is the
# destination, so the phrase names exactly one cell).
DIRECTIONS: dict[str, tuple[str, ...]] = {
    "left": ("all the way to the left", "over to the far left", "to the left edge"),
    "right": ("all the way to the right", "over to the far right", "to the right edge"),
    "up": ("all the way up", "up to the top edge", "right up to the top"),
    "down": ("all the way down", "down to the bottom edge", "right down to the bottom"),
}

# Skin tones (CLDR names) and hair styles as noun phrases; "none" is the default yellow/plain.
TONES: dict[str, tuple[str, ...]] = {
    "none": ("default yellow skin", "the classic cartoon-yellow skin", "plain yellow skin"),
    "light": ("light skin", "pale skin", "fair skin"),
    "medium-light": ("medium-light skin", "lightly tanned skin", "light-brown skin"),
    "medium": ("medium skin", "olive skin", "a medium skin tone"),
    "medium-dark": ("medium-dark skin", "brown skin", "a medium-dark complexion"),
    "dark": ("dark skin", "deep brown skin", "very dark skin"),
}
HAIR: dict[str, tuple[str, ...]] = {
    "none": ("default hair", "their ordinary hair", "a regular hairdo"),
    "red hair": ("red hair", "ginger hair", "fiery red hair"),
    "curly hair": ("curly hair", "curls", "a head of curls"),
    "white hair": ("white hair", "grey hair", "silver hair"),
    "bald": ("a bald head", "no hair at all", "a shaved head"),
}
VIEWS: dict[str, tuple[str, ...]] = {
    "face": ("only the face", "just its face", "a close-up of the head"),
    "body": ("the whole animal", "its full body", "the entire animal, head to tail"),
}

# The sentence shapes a template writer produces; no test text may match any of them.
TEMPLATE_WRITER_PATTERNS: tuple[re.Pattern[str], ...] = tuple(
    re.compile(p)
    for p in (
        r"^change the .+ to .+$",
        r"^replace the .+ with .+$",
        r"^make the .+ (small|large)$",
        r"^add an? .+$",
        r"^remove the .+$",
        r"^move the .+ to the .+$",
        r"^show (only the face|the whole animal)$",
    )
)

_T = dict[str, tuple[str, ...]]

# kind -> the single plain template (canonical words only).
PLAIN_TEMPLATES: dict[str, str] = {
    "colour": "change the {obj} to {new}",
    "shape": "change the {obj} to {a_new}",
    "size": "make the {obj} {new}",
    "add": "add {a_new_obj} {where}",
    "remove": "remove the {obj}",
    "move": "move the {obj} {where}",
    "skin_tone": "change the skin tone to {new}",
    "gender": "change the gender to {new}",
    "hair": "change the hair to {new}",
    "recolour": "change the colour to {new}",
    "form": "show {view}",
}

# style -> kind -> templates. ``recolour`` is a whole-emoji colour change (no object slot).
TEMPLATES: dict[str, _T] = {
    "casual": {
        "colour": ("let's have the {obj} in {new} instead", "make the {obj} {new} instead"),
        "shape": ("swap the {obj} for {a_new}", "let's turn the {obj} into {a_new}"),
        "size": ("the {obj} should be {comparative}", "let the {obj} get {comparative}"),
        "add": ("put {a_new_obj} {where} too", "throw in {a_new_obj} {where}"),
        "remove": ("get rid of the {obj}", "lose the {obj}", "drop the {obj}"),
        "move": ("shift the {obj} {direction}", "put the {obj} {where} instead"),
        "skin_tone": ("give it {new} instead", "let's try {new} on this one"),
        "gender": ("I'd like the {new} version of this", "go with a {new} one instead"),
        "hair": ("give them {new} instead", "let's try {new} on them"),
        "recolour": ("I want it in {new} instead", "how about {a_new} one?"),
        "form": ("I'd rather see {view}", "show me {view} instead"),
    },
    "request": {
        "colour": (
            "could you show it with the {obj} in {new}?",
            "can you recolour the {obj} {new}?",
        ),
        "shape": ("could you replace the {obj} with {a_new}?", "can the {obj} become {a_new}?"),
        "size": ("could you make the {obj} {comparative}?", "can the {obj} be {comparative}?"),
        "add": ("could you also place {a_new_obj} {where}?", "can you add {a_new_obj} {where}?"),
        "remove": ("could you take out the {obj}?", "can you delete the {obj}, please?"),
        "move": ("could you move the {obj} so it sits {where}?", "can the {obj} go {where}?"),
        "skin_tone": ("could you show the same one with {new}?", "can I see it with {new}?"),
        "gender": ("could you show the {new} version?", "is there a {new} variant of this?"),
        "hair": ("could you show them with {new}?", "can I see this one with {new}?"),
        "recolour": ("could I get this in {new}?", "do you have {a_new} version?"),
        "form": ("could you show {view}?", "can I see {view}, please?"),
    },
    "fragment": {
        "colour": ("{obj}, but {new}", "{new} for the {obj}", "{new} {bare}, not {old}"),
        "shape": ("{a_new} in place of the {obj}", "{new} instead of the {obj}"),
        "size": ("{obj}, only {comparative}", "{comparative} {obj} please"),
        "add": ("plus {a_new_obj} {where}", "{a_new_obj} {where} as well"),
        "remove": ("no {obj}", "without the {obj}"),
        "move": ("{obj} {where} now", "{obj}, {where} instead"),
        "skin_tone": ("{new}, not {old}", "{new} this time"),
        "gender": ("{new}, not {old}", "{new} variant"),
        "hair": ("{new} this time", "{new}, not {old}"),
        "recolour": ("{new}, not {old}", "{new} one"),
        "form": ("{animal}, {view}", "{animal}: {view}"),
    },
    "target": {
        "colour": (
            "same picture but the {obj} is {new}",
            "the same scene, only the {obj} is {new} now",
        ),
        "shape": (
            "same picture with {a_new} where the {obj} was",
            "same scene, the {obj} now {a_new}",
        ),
        "size": (
            "same picture but the {obj} is {comparative}",
            "the same scene, with the {obj} {comparative}",
        ),
        "add": (
            "same picture with an extra {new_obj} {where}",
            "the scene plus {a_new_obj} {where}",
        ),
        "remove": ("same picture minus the {obj}", "the same scene, but the {obj} is gone"),
        "move": ("same picture but the {obj} is {where}", "same scene, the {obj} now {where}"),
        "skin_tone": ("the same emoji with {new}", "same one, {new}"),
        "gender": ("the same emoji as a {new} figure", "same thing, {new}"),
        "hair": ("the same person with {new}", "same one, but with {new}"),
        "recolour": ("the same {noun} but {new}", "an identical {noun} coloured {new}"),
        "form": ("the same {animal}, {view}", "this {animal} showing {view}"),
    },
}


def word(canonical: str, rng: random.Random, style: str, p: float = 0.6) -> str:
    """``canonical`` or, in a test style and with probability ``p``, one of its synonyms."""
    options = SYNONYMS.get(canonical, ())
    if style == PLAIN or not options or rng.random() >= p:
        return canonical
    return rng.choice(options)


def _variant(table: Mapping[str, Sequence[str]], key: str, rng: random.Random, style: str) -> str:
    if key not in table:
        raise ValueError(f"unknown value {key!r}; expected one of {sorted(table)}")
    options = table[key]
    return options[0] if style == PLAIN else rng.choice(options)


def place(position: str, rng: random.Random, style: str) -> str:
    """A phrase for a 3x3 cell ("at the top left"); canonical in the plain style."""
    return _variant(PLACES, position, rng, style)


def tone(value: str, rng: random.Random, style: str) -> str:
    """A noun phrase for a skin tone; the plain style uses the bare CLDR word."""
    return (
        ("default" if value == "none" else value)
        if style == PLAIN
        else _variant(TONES, value, rng, style)
    )


def hair(value: str, rng: random.Random, style: str) -> str:
    """A noun phrase for a hair style; the plain style uses a bare word."""
    if style == PLAIN:
        return {"none": "default", "bald": "bald"}.get(value, value.removesuffix(" hair"))
    return _variant(HAIR, value, rng, style)


def direction(value: str, rng: random.Random, style: str) -> str:
    """A phrase for moving to the ``left``/``right``/``up``/``down`` edge."""
    return _variant(DIRECTIONS, value, rng, style)


def view(value: str, rng: random.Random, style: str) -> str:
    """How to say "the face" or "the whole animal"."""
    return _variant(VIEWS, value, rng, style)


def article(phrase: str) -> str:
    """``phrase`` with "a" or "an" in front."""
    return ("an " if phrase[:1].lower() in "aeiou" else "a ") + phrase


def _fields(template: str) -> set[str]:
    return {name for _, name, _, _ in string.Formatter().parse(template) if name}


def paraphrase(kind: str, slots: Mapping[str, str], style: str, rng: random.Random) -> str:
    """Fill a template of ``style`` for ``kind`` from ``slots``.

    Every slot ``x`` also exists as ``a_x`` (with its article). Templates needing a slot that
    is absent are skipped, so optional slots (``direction``, ``bare``) just narrow the choice.
    """
    values = dict(slots)
    values.update({f"a_{k}": article(v) for k, v in slots.items() if v})
    if style == PLAIN:
        options: Sequence[str] = (PLAIN_TEMPLATES[kind],)
    elif style in TEMPLATES:
        options = TEMPLATES[style].get(kind, ())
    else:
        raise ValueError(f"unknown style {style!r}; expected {PLAIN!r} or one of {TEST_STYLES}")
    usable = [t for t in options if _fields(t) <= values.keys()]
    if not usable:
        raise ValueError(f"no {style!r} template for kind {kind!r} fits slots {sorted(slots)}")
    return rng.choice(usable).format_map(values)


def looks_like_template(text: str) -> bool:
    """True when ``text`` has a shape a template writer would produce."""
    return any(p.match(text.strip().lower()) for p in TEMPLATE_WRITER_PATTERNS)


def assign_styles(n: int, rng: random.Random) -> list[str]:
    """``n`` test styles, balanced (each style within one of the others) and shuffled."""
    styles = [TEST_STYLES[i % len(TEST_STYLES)] for i in range(n)]
    rng.shuffle(styles)
    return styles
