"""EmojiCIR: real artwork (Noto Color Emoji) with names and attributes from Unicode.

The catalogue is derived from the font and Python's Unicode database, not typed in:

* **people** — gendered families: the Unicode triples (adult/man/woman, child/boy/girl, ...),
  ZWJ role sequences (man/woman/adult + ⚕, 🎓, 🔧, ...), gendered activities (🏃 + ♂/♀) and
  hair styles (🦰 🦱 🦳 🦲); each with the five skin-tone modifiers where the font has them;
* **skin** — every other skin-tone modifier base (hands, body parts, ...);
* **colour** — codepoints whose names differ only by a colour word (LARGE RED CIRCLE / LARGE BLUE
  CIRCLE, BLUE HEART / GREEN HEART, ...); black/white join only families that have a real hue
  (old names use BLACK/WHITE for "filled/outlined", e.g. BLACK QUESTION MARK ORNAMENT is red);
* **animal** — "X FACE" beside "X" (DOG FACE / DOG, CAT FACE / CAT, ...).

A candidate is kept only when the font draws it as one glyph (raqm shaping, checked with the
glyph box) and its rendering is non-blank and not the missing-glyph box. A query pairs two
emoji of one family that differ in exactly one attribute. Families, not images, are split
between train and test, so the two sides share no artwork.
"""

from __future__ import annotations

import hashlib
import logging
import os
import random
import re
import unicodedata
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from functools import lru_cache
from itertools import product
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont, features

from opencir.data.worlds import phrasing
from opencir.data.worlds.common import (
    DigestIndex,
    ImageRecord,
    QueryRecord,
    WorldInfo,
    WorldWriter,
    build_world,
    config_params,
)

log = logging.getLogger(__name__)

WORLD = "emojicir"
FONT_PACKAGE = "fonts-noto-color-emoji"
FONT_ENV = "OPENCIR_EMOJI_FONT"
FONT_CANDIDATES = (
    "/usr/share/fonts/truetype/noto/NotoColorEmoji.ttf",
    "/usr/share/fonts/noto/NotoColorEmoji.ttf",
    "/usr/share/fonts/google-noto-emoji/NotoColorEmoji.ttf",
    "/usr/local/share/fonts/NotoColorEmoji.ttf",
)
FONT_PIXELS = 109  # the one bitmap strike Noto Color Emoji carries
ZWJ, VS16, MALE, FEMALE = "\u200d", "\ufe0f", "\u2642", "\u2640"
TONES = {  # CLDR names of the Fitzpatrick modifiers U+1F3FB..U+1F3FF
    "light": "\U0001f3fb",
    "medium-light": "\U0001f3fc",
    "medium": "\U0001f3fd",
    "medium-dark": "\U0001f3fe",
    "dark": "\U0001f3ff",
}
EMOJI_RANGES = ((0x2600, 0x27C0), (0x2B00, 0x2C00), (0x1F000, 0x1FB00))
HUES = ("RED", "ORANGE", "YELLOW", "GREEN", "BLUE", "PURPLE", "BROWN")
COLOUR_WORDS = (*HUES, "BLACK", "WHITE")
# Unicode single-codepoint people as (neutral, male, female); None where Unicode has no such one.
GENDER_TRIPLES = (
    ("ADULT", "MAN", "WOMAN"),
    ("CHILD", "BOY", "GIRL"),
    ("OLDER ADULT", "OLDER MAN", "OLDER WOMAN"),
    ("PERSON WITH CROWN", "PRINCE", "PRINCESS"),
    ("PREGNANT PERSON", "PREGNANT MAN", "PREGNANT WOMAN"),
    (None, "FATHER CHRISTMAS", "MOTHER CHRISTMAS"),
)
GENDERS = ("gender-neutral", "male", "female")
# Unicode names only the object of a ZWJ role sequence; CLDR names the role.
ROLES = {
    "STAFF OF AESCULAPIUS": "health worker",
    "GRADUATION CAP": "student",
    "SCHOOL": "teacher",
    "SCALES": "judge",
    "EAR OF RICE": "farmer",
    "COOKING": "cook",
    "WRENCH": "mechanic",
    "FACTORY": "factory worker",
    "BRIEFCASE": "office worker",
    "MICROSCOPE": "scientist",
    "PERSONAL COMPUTER": "technologist",
    "MICROPHONE": "singer",
    "ARTIST PALETTE": "artist",
    "AIRPLANE": "pilot",
    "ROCKET": "astronaut",
    "FIRE ENGINE": "firefighter",
    "PROBING CANE": "with white cane",
    "MOTORIZED WHEELCHAIR": "in motorized wheelchair",
    "MANUAL WHEELCHAIR": "in manual wheelchair",
    "BABY BOTTLE": "feeding baby",
}
HAIR_PREFIX = "EMOJI COMPONENT "
KINDS = ("skin_tone", "gender", "hair", "colour", "form")  # a query's kind = the attribute it edits


class FontNotFoundError(FileNotFoundError):
    """The Noto Color Emoji font file is not installed."""


def find_font(path: str | Path | None = None) -> Path:
    """The emoji font: ``path``, else ``$OPENCIR_EMOJI_FONT``, else the usual system places."""
    env = os.environ.get(FONT_ENV)
    tried = [Path(path)] if path else [Path(env)] if env else [Path(p) for p in FONT_CANDIDATES]
    for candidate in tried:
        if candidate.is_file():
            return candidate
    where = ", ".join(str(p) for p in tried)
    raise FontNotFoundError(
        f"EmojiCIR needs the Noto Color Emoji font; not found at {where}. Install the Debian "
        f"package '{FONT_PACKAGE}' (apt-get install {FONT_PACKAGE}), or pass font_path= / set "
        f"{FONT_ENV} to a NotoColorEmoji.ttf"
    )


def check_text_layout() -> None:
    """Skin tones and ZWJ sequences are ligatures: they need Pillow's raqm layout engine."""
    if not features.check("raqm"):
        raise RuntimeError(
            "EmojiCIR needs Pillow's raqm text layout to draw skin tones and ZWJ sequences; "
            "Pillow's wheels load it with the system FriBiDi library: install the Debian "
            "package 'libfribidi0' (apt-get install libfribidi0)"
        )


@lru_cache(maxsize=4)
def load_font(path: str) -> ImageFont.FreeTypeFont:
    """The font at its bitmap size (cached per process; workers load their own)."""
    return ImageFont.truetype(path, FONT_PIXELS, layout_engine=ImageFont.Layout.RAQM)


@dataclass(frozen=True)
class Emoji:
    """One catalogue entry: the character sequence, its alt text and attributes."""

    text: str
    alt_text: str
    attributes: Mapping[str, str]

    @property
    def id(self) -> str:
        return "emoji-" + "-".join(f"{ord(c):x}" for c in self.text)


@dataclass(frozen=True)
class Family:
    """Emoji sharing one concept; queries pair members that differ in one attribute."""

    name: str
    group: str
    members: tuple[Emoji, ...]


# ---------------------------------------------------------------------------------- the font


class _Probe:
    """Asks the font whether a sequence shapes to exactly one glyph (no rasterising)."""

    def __init__(self, font: ImageFont.FreeTypeFont) -> None:
        self.font = font
        self.max_width = 1.25 * font.getlength("\U0001f600")

    def single(self, text: str) -> bool:
        if len(text) == 1:  # the missing glyph has an advance but no ink box
            left, top, right, bottom = self.font.getbbox(text)
            return bottom > top and 0 < right - left <= self.max_width
        # A sequence the font ligates advances by one glyph; unsupported ones by two or more.
        return 0 < self.font.getlength(text) <= self.max_width

    def first(self, *candidates: str) -> str | None:
        """The first candidate spelling that the font draws as one glyph."""
        return next((c for c in candidates if self.single(c)), None)


def _singles(probe: _Probe) -> dict[str, str]:
    """Unicode name → character, for every emoji-block codepoint the font draws."""
    out = {}
    for lo, hi in EMOJI_RANGES:
        for cp in range(lo, hi):
            name = unicodedata.name(chr(cp), "")
            if name and not name.startswith("EMOJI MODIFIER") and probe.single(chr(cp)):
                out[name] = chr(cp)
    return out


def _glyph(text: str, font: ImageFont.FreeTypeFont) -> Image.Image:
    canvas = Image.new("RGBA", (2 * FONT_PIXELS, FONT_PIXELS + 40), (0, 0, 0, 0))
    ImageDraw.Draw(canvas).text((4, 4), text, font=font, embedded_color=True)
    return canvas


def render_emoji(payload: tuple[str, str, int]) -> Image.Image:
    """Render ``(text, font_path, size)``: the glyph, centred on white, ``size``×``size`` RGB."""
    text, font_path, size = payload
    glyph = _glyph(text, load_font(font_path))
    box = glyph.getbbox()
    if box is None:
        raise ValueError(f"the font draws nothing for {text!r}")
    glyph = glyph.crop(box)
    side = int(max(glyph.size) * 1.12)
    square = Image.new("RGBA", (side, side), (255, 255, 255, 255))
    square.alpha_composite(glyph, ((side - glyph.width) // 2, (side - glyph.height) // 2))
    return square.convert("RGB").resize((size, size), Image.Resampling.LANCZOS)


class _InkCheck:
    """Rejects blank renderings, the missing-glyph box and exact repeats of earlier emoji."""

    def __init__(self, font: ImageFont.FreeTypeFont) -> None:
        self.font = font
        self.seen = {self._fingerprint(np.asarray(_glyph("\U0010fffd", font)))}

    @staticmethod
    def _fingerprint(pixels: np.ndarray) -> str:
        return hashlib.blake2b(pixels.tobytes(), digest_size=16).hexdigest()

    def keep(self, text: str) -> bool:
        """True for a new, visible drawing (e.g. Noto draws 🏂 the same in every skin tone)."""
        pixels = np.asarray(_glyph(text, self.font))
        key = self._fingerprint(pixels)
        if (pixels[..., 3] > 0).mean() <= 0.02 or key in self.seen:
            return False
        self.seen.add(key)
        return True


# ---------------------------------------------------------------------------------- catalogue


@dataclass(frozen=True)
class _Variant:
    """A person or skin emoji before its skin tone is chosen: ``head + tone + tail``."""

    head: str
    tail: str
    alt: str
    attributes: Mapping[str, str]


def _spell(probe: _Probe, v: _Variant, tone: str) -> str | None:
    """The spelling of ``v`` with ``tone`` that the font draws, if any."""
    mod = TONES.get(tone, "")
    return probe.first(
        v.head + mod + v.tail, v.head + (mod or VS16) + v.tail, v.head + mod + v.tail.rstrip(VS16)
    )


def _with_tones(probe: _Probe, family: str, group: str, variants: Sequence[_Variant]) -> Family:
    """Every variant in every skin tone the font has (alt text as CLDR: "man: dark skin tone")."""
    members = []
    for v, tone in product(variants, ("none", *TONES)):
        text = _spell(probe, v, tone)
        if text is None:
            continue
        hair = v.attributes.get("hair", "none")
        quals = [f"{tone} skin tone"] * (tone != "none") + [hair] * (hair != "none")
        alt = f"{v.alt}: {', '.join(quals)}" if quals else v.alt
        attrs = {"group": group, "family": family, **v.attributes, "skin_tone": tone}
        members.append(Emoji(text, alt, attrs))
    return Family(family, group, tuple(members))


def _gendered(name: str, noun: str) -> str:
    """A Unicode name with its person word swapped for ``noun`` ("RUNNER" → "man runner")."""
    out, swapped = re.subn(r"\b(PERSON|MAN|WOMAN)\b", noun.upper(), name)
    return (out if swapped else f"{noun.upper()} {name}").lower()


def _triple_families(probe: _Probe, singles: Mapping[str, str]) -> Iterator[Family]:
    """Single-codepoint people (adult/man/woman, ...); the adult family also varies hair."""
    hairs = {n.removeprefix(HAIR_PREFIX).lower(): c for n, c in singles.items() if HAIR_PREFIX in n}
    for names in GENDER_TRIPLES:
        with_hair = names[0] == "ADULT"
        variants = []
        for gender, name in zip(GENDERS, names, strict=True):
            if name not in singles:
                continue
            ch, attrs = singles[name], {"gender": gender}
            base = attrs | ({"hair": "none"} if with_hair else {})
            variants.append(_Variant(ch, "", name.lower(), base))
            for hair, h in hairs.items() if with_hair else ():
                variants.append(_Variant(ch, ZWJ + h, name.lower(), attrs | {"hair": hair}))
        if variants:
            yield _with_tones(probe, (names[0] or names[1]).lower(), "person", variants)


def _activity_families(
    probe: _Probe, singles: Mapping[str, str], skip: set[str]
) -> dict[str, Family]:
    """People with ♂/♀ ZWJ variants (🏃, 🏃‍♂️, 🏃‍♀️), by base name; the base is gender-neutral."""
    families = {}
    for name, ch in singles.items():
        if name in skip or not probe.single(ch + ZWJ + FEMALE + VS16):
            continue  # ♂/♀ variants come in pairs: one probe rules a base out
        neutral = re.sub(r"\b(MAN|WOMAN)\b", "PERSON", name).lower()
        variants = [_Variant(ch, "", neutral, {"gender": "gender-neutral"})]
        for gender, sign, noun in (("male", MALE, "man"), ("female", FEMALE, "woman")):
            tail = ZWJ + sign + VS16
            if probe.single(ch + tail):
                variants.append(_Variant(ch, tail, _gendered(name, noun), {"gender": gender}))
        families[name] = _with_tones(probe, neutral, "person", variants)
    return families


def _role_families(probe: _Probe, singles: Mapping[str, str], skip: set[str]) -> Iterator[Family]:
    """Adult/man/woman + ZWJ + object (👨‍⚕️): named with the CLDR role word."""
    heads = {g: singles[n] for g, n in zip(GENDERS, GENDER_TRIPLES[0], strict=True) if n in singles}
    nouns = dict(zip(GENDERS, ("person", "man", "woman"), strict=True))
    for name, ch in singles.items():
        adult = heads.get("gender-neutral", "")
        if name in skip or name.startswith(HAIR_PREFIX) or not probe.single(adult + ZWJ + ch):
            continue  # every role sequence has the adult form: one probe rules an object out
        role = ROLES.get(name, f"with {name.lower()}")
        variants = []
        for g, head in heads.items():
            tail = next((t for t in (ZWJ + ch, ZWJ + ch + VS16) if probe.single(head + t)), None)
            if tail is not None:
                variants.append(_Variant(head, tail, f"{nouns[g]} {role}", {"gender": g}))
        if variants:
            prefixed = role.startswith(("with ", "in ", "feeding "))
            yield _with_tones(probe, f"person {role}" if prefixed else role, "person", variants)


def _person_families(probe: _Probe, singles: Mapping[str, str]) -> list[Family]:
    """Gendered families first; every remaining skin-tone base becomes a "skin" family."""
    tone_bases = {n for n, c in singles.items() if probe.single(c + TONES["medium"])}
    triple = {n for names in GENDER_TRIPLES for n in names if n}
    hair = {n for n in singles if n.startswith(HAIR_PREFIX)}
    families = list(_triple_families(probe, singles))
    activities = _activity_families(probe, singles, skip=triple | hair)
    families += activities.values()
    families += _role_families(probe, singles, skip=tone_bases | triple)
    for name in sorted(tone_bases - triple - activities.keys()):
        variant = _Variant(singles[name], "", name.lower(), {})
        families.append(_with_tones(probe, name.lower(), "skin", [variant]))
    return families


def _colour_families(singles: Mapping[str, str]) -> list[Family]:
    """Codepoints whose names differ only by a colour word (size words LARGE/MEDIUM ignored)."""
    groups: dict[str, dict[str, tuple[str, str]]] = {}
    for name, ch in singles.items():
        words = name.split()
        colours = [w for w in words if w in COLOUR_WORDS]
        if len(colours) == 1:
            noun = " ".join(w for w in words if w not in (colours[0], "LARGE", "MEDIUM")).lower()
            groups.setdefault(noun, {}).setdefault(colours[0].lower(), (name, ch))
    families = []
    for noun, members in groups.items():
        if len(members) > 1 and any(c.upper() in HUES for c in members):
            emoji = tuple(
                Emoji(ch, name.lower(), {"group": "colour", "family": noun, "colour": colour})
                for colour, (name, ch) in members.items()
            )
            families.append(Family(noun, "colour", emoji))
    return families


def _animal_families(singles: Mapping[str, str]) -> list[Family]:
    """ "X FACE" beside "X" (DOG FACE / DOG): the face and the whole animal."""
    families = []
    for name, ch in singles.items():
        body = name.removesuffix(" FACE")
        if body != name and body in singles:
            animal = body.lower()
            members = tuple(
                Emoji(c, n.lower(), {"group": "animal", "family": animal, "form": form})
                for c, n, form in ((ch, name, "face"), (singles[body], body, "body"))
            )
            families.append(Family(animal, "animal", members))
    return families


@lru_cache(maxsize=2)
def catalogue(font_path: str) -> tuple[Family, ...]:
    """Every family the font can draw, each emoji in exactly one family (cached)."""
    probe = _Probe(load_font(font_path))
    singles = _singles(probe)
    families = [
        *_person_families(probe, singles),
        *_colour_families(singles),
        *_animal_families(singles),
    ]
    seen: set[str] = set()
    names: set[str] = set()
    out = []
    for family in families:
        members = tuple(m for m in family.members if m.text not in seen)
        seen.update(m.text for m in members)
        if len(members) > 1 and family.name not in names:  # a name is a family's identity
            names.add(family.name)
            out.append(Family(family.name, family.group, members))
    log.debug("emoji catalogue: %d families, %d emoji", len(out), len(seen))
    return tuple(out)


# ---------------------------------------------------------------------------------- the world


@dataclass(frozen=True)
class EmojiConfig:
    """Everything that changes an EmojiCIR world. ``None`` sizes take every emoji of a side."""

    n_train: int | None = None
    n_test: int | None = None
    n_queries: int = 300
    n_val_queries: int = 100
    seed: int = 0
    image_size: int = 64
    test_fraction: float = 0.5
    n_distractors: int = 3
    val_phrasing: str = phrasing.PLAIN  # or "held-out": val texts in the held-out val styles

    def __post_init__(self) -> None:
        if not 0.0 < self.test_fraction < 1.0:
            raise ValueError(f"test_fraction must be in (0, 1), got {self.test_fraction}")
        if self.image_size < 16:
            raise ValueError(f"image_size must be at least 16 pixels, got {self.image_size}")
        sizes = (self.n_train or 0, self.n_test or 0, self.n_queries, self.n_val_queries)
        if min(*sizes, self.n_distractors) < 0:
            raise ValueError("image, query and distractor counts must be >= 0")
        phrasing.check_phrasing("val_phrasing", self.val_phrasing, phrasing.VAL_PHRASINGS)


def _split_families(
    families: Sequence[Family], fraction: float, rng: random.Random
) -> dict[str, list[Family]]:
    """Whole families to each side, stratified by group (both sides get every group)."""
    sides: dict[str, list[Family]] = {"train": [], "test": []}
    for group in sorted({f.group for f in families}):
        members = [f for f in families if f.group == group]
        rng.shuffle(members)
        k = min(max(round(fraction * len(members)), 1), len(members) - 1)
        sides["test"] += members[:k]
        sides["train"] += members[k:]
    return sides


def _take(families: Sequence[Family], cap: int | None, rng: random.Random) -> list[Emoji]:
    """Whole families, one group at a time in turn, until ``cap`` emoji (None: all)."""
    queues = {g: [f for f in families if f.group == g] for g in sorted({f.group for f in families})}
    chosen: list[Emoji] = []
    while any(queues.values()) and (cap is None or len(chosen) < cap):
        for queue in queues.values():
            if not queue or (cap is not None and len(chosen) >= cap):
                continue
            members = list(queue.pop(0).members)
            room = len(members) if cap is None else cap - len(chosen)
            chosen += members if room >= len(members) else rng.sample(members, room)
    return chosen


def _attribute_pairs(items: Sequence[Emoji]) -> dict[str, list[tuple[Emoji, Emoji]]]:
    """(reference, target) pairs of one family differing in exactly one attribute, by kind."""
    by_family: dict[str, list[Emoji]] = {}
    for e in items:
        by_family.setdefault(e.attributes["family"], []).append(e)
    pairs: dict[str, list[tuple[Emoji, Emoji]]] = {}
    for members in by_family.values():
        for a, b in product(members, members):
            diff = [k for k in a.attributes if a.attributes[k] != b.attributes.get(k)]
            if len(diff) == 1:
                pairs.setdefault(diff[0], []).append((a, b))
    return pairs


def _pick_pairs(
    pairs: Mapping[str, list[tuple[Emoji, Emoji]]], n: int, rng: random.Random
) -> list[tuple[str, Emoji, Emoji]]:
    """``n`` pairs, kinds taken in turn so that rare kinds (form, colour) are not drowned."""
    pools = {k: rng.sample(v, len(v)) for k, v in sorted(pairs.items())}
    picked: list[tuple[str, Emoji, Emoji]] = []
    while len(picked) < n and any(pools.values()):
        for kind, pool in pools.items():
            if pool and len(picked) < n:
                picked.append((kind, *pool.pop()))
    if len(picked) < n:
        log.warning(
            "EmojiCIR: only %d of the %d queries asked for exist on this side", len(picked), n
        )
    return picked


def emoji_text(kind: str, ref: Emoji, target: Emoji, style: str, rng: random.Random) -> str:
    """The modification text turning ``ref`` into ``target`` (they differ in ``kind``)."""
    old, new = ref.attributes[kind], target.attributes[kind]
    family = target.attributes["family"]
    if kind == "skin_tone":
        slots = {"new": phrasing.tone(new, rng, style), "old": phrasing.tone(old, rng, style)}
    elif kind == "hair":
        slots = {"new": phrasing.hair(new, rng, style), "old": phrasing.hair(old, rng, style)}
    elif kind == "form":
        return phrasing.paraphrase(
            kind, {"view": phrasing.view(new, rng, style), "animal": family}, style, rng
        )
    else:  # gender, colour
        slots = {"new": phrasing.word(new, rng, style), "old": phrasing.word(old, rng, style)}
    slots["noun"] = family
    return phrasing.paraphrase("recolour" if kind == "colour" else kind, slots, style, rng)


def _near(
    target: Emoji, ref: Emoji, items: Sequence[Emoji], n: int, rng: random.Random
) -> list[Emoji]:
    """Up to ``n`` hard negatives: family members one attribute away from the target, then
    (for small families, e.g. dog face / dog) other families' emoji with the same attributes."""
    t = target.attributes
    others = [e for e in items if e not in (ref, target) and e.attributes["group"] == t["group"]]
    diffs = [(e, [k for k in t if t[k] != e.attributes.get(k)]) for e in others]
    same_family = [e for e, d in diffs if len(d) == 1 and d[0] != "family"]
    other_family = [e for e, d in diffs if d == ["family"]]
    picked = rng.sample(same_family, min(n, len(same_family)))
    return picked + rng.sample(other_family, min(n - len(picked), len(other_family)))


def _query_records(
    split: str,
    items: Sequence[Emoji],
    n: int,
    test: bool,
    cfg: EmojiConfig,
    rng: random.Random,
    index: DigestIndex,
) -> list[QueryRecord]:
    """Queries of one side; targets are every image of the side with the target's attributes."""
    picked = _pick_pairs(_attribute_pairs(items), n, rng)
    styles = phrasing.assign_styles(len(picked), rng) if test else [phrasing.PLAIN] * len(picked)
    records = []
    for i, ((kind, ref, target), style) in enumerate(zip(picked, styles, strict=True)):
        distractors = _near(target, ref, items, cfg.n_distractors, rng)
        edit = {"kind": kind, "old": ref.attributes[kind], "new": target.attributes[kind]}
        records.append(
            QueryRecord(
                f"{split}-q{i:05d}",
                ref.id,
                emoji_text(kind, ref, target, style, rng),
                index.matches(target.attributes, exclude=ref.id),
                kind,
                style,
                edit,
                tuple(d.id for d in distractors),
            )
        )
    reworded = None if test else phrasing.reworded_styles(cfg.val_phrasing, len(records), cfg.seed)
    if reworded is None:
        return records
    styles, text_rng = reworded  # same queries, other words: the held-out val phrasing
    return [
        replace(r, text=emoji_text(kind, ref, target, style, text_rng), style=style)
        for r, (kind, ref, target), style in zip(records, picked, styles, strict=True)
    ]


def _font_params(font: Path) -> dict[str, Any]:
    digest = hashlib.sha256(font.read_bytes()).hexdigest()[:16]
    return {"path": str(font), "sha256_16": digest, "bytes": font.stat().st_size}


def world_params(cfg: EmojiConfig, font: Path) -> dict[str, Any]:
    """What ``world.json`` records: the config (minus seed), the font and Unicode versions."""
    params = config_params(cfg)
    params.update(
        generator="opencir.data.worlds.emoji",
        font=_font_params(font),
        kinds=list(KINDS),
        unicode_version=unicodedata.unidata_version,
        font_pixels=FONT_PIXELS,
        styles={
            "test": list(phrasing.TEST_STYLES),
            "val": phrasing.phrasing_styles(cfg.val_phrasing),
        },
    )
    return params


def _write_side(
    writer: WorldWriter,
    side: str,
    items: Sequence[Emoji],
    font: Path,
    cfg: EmojiConfig,
    rng: random.Random,
) -> None:
    """Render one side's emoji, then write its queries (test or val)."""
    index = DigestIndex()
    records = (
        (
            ImageRecord(e.id, e.alt_text, dict(e.attributes), side),
            (e.text, str(font), cfg.image_size),
        )
        for e in items
    )
    writer.write_images(index.tap(records), render_emoji, len(items), f"EmojiCIR {side}")
    split, n = ("test", cfg.n_queries) if side == "test" else ("val", cfg.n_val_queries)
    writer.write_queries(split, _query_records(split, items, n, side == "test", cfg, rng, index))


def write_emoji_world(
    root: str | Path,
    cfg: EmojiConfig,
    *,
    font_path: str | Path | None = None,
    workers: int = 0,
    progress: bool = True,
    overwrite: bool = False,
) -> WorldInfo:
    """Write the EmojiCIR world described by ``cfg`` at ``root`` (no-op if already there)."""
    font = find_font(font_path)
    check_text_layout()

    def populate(writer: WorldWriter) -> None:
        rng = random.Random(cfg.seed)
        ink = _InkCheck(load_font(str(font)))
        sides = _split_families(catalogue(str(font)), cfg.test_fraction, rng)
        for side, cap in (("test", cfg.n_test), ("train", cfg.n_train)):
            items = [e for e in _take(sides[side], cap, rng) if ink.keep(e.text)]
            rng.shuffle(items)
            _write_side(writer, side, items, font, cfg, rng)

    return build_world(
        root,
        WORLD,
        cfg.seed,
        world_params(cfg, font),
        populate,
        workers=workers,
        progress=progress,
        overwrite=overwrite,
    )


def generate_emoji_world(
    root: str | Path,
    n_train: int | None = None,
    n_test: int | None = None,
    n_queries: int = 300,
    seed: int = 0,
    image_size: int = 64,
    progress: bool = True,
    *,
    n_val_queries: int = 100,
    font_path: str | Path | None = None,
    workers: int = 0,
    overwrite: bool = False,
    **options: Any,
) -> WorldInfo:
    """Generate EmojiCIR at ``root``; ``options`` are further :class:`EmojiConfig` fields.

    ``n_train``/``n_test`` cap each side (``None``: every emoji of the side's families).
    Raises :class:`FontNotFoundError` naming the Debian package when the font is missing.
    """
    cfg = EmojiConfig(
        n_train=n_train,
        n_test=n_test,
        n_queries=n_queries,
        n_val_queries=n_val_queries,
        seed=seed,
        image_size=image_size,
        **options,
    )
    return write_emoji_world(
        root, cfg, font_path=font_path, workers=workers, progress=progress, overwrite=overwrite
    )
