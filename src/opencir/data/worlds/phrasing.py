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
* the *held-out val styles* — ``spoken`` and ``note`` — for a val side whose phrasing is as
  unseen as the test's but shares none of it: their own templates and their own words
  (:data:`VAL_SYNONYMS`, and val-only phrases for places, moves, skin tones, hair and views).
  Settings chosen on such a val side are chosen for unseen phrasing, without looking at the
  test phrasings.
* the *varied training styles* — ``directive``, ``wish``, ``shorthand`` and ``outcome`` (a
  description of the result) — for ground-truth training
  queries worded in many ways, again with templates and words of their own, so a supervised
  model can learn that a change may be said in many ways without seeing any val or test
  phrasing.

Each register (test, held-out val, varied training) is a :class:`Register`; a style belongs
to exactly one, and the plain style to none (it always uses the canonical words).

Worlds build the slot values (``obj``, ``new``, ``where``, ...) with :func:`word` and
:func:`place`, then call :func:`paraphrase`.
"""

from __future__ import annotations

import random
import re
import string
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

PLAIN = "plain"
TEST_STYLES = ("casual", "request", "fragment", "target")
VAL_STYLES = ("spoken", "note")
TRAIN_STYLES = ("directive", "wish", "shorthand", "outcome")
VAL_PHRASINGS = ("plain", "held-out")  # what a world's val side may use
TRAIN_PHRASINGS = ("plain", "varied")  # what a world's ground-truth training queries may use

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

# The held-out val styles' words: none of them is a test synonym or phrase (the canonical
# word, shared by every style, stays possible).
VAL_SYNONYMS: dict[str, tuple[str, ...]] = {
    "red": ("ruby", "brick-red", "tomato-red"),
    "orange": ("apricot", "pumpkin", "carrot-orange"),
    "yellow": ("canary", "sunflower", "butter-yellow"),
    "green": ("lime", "olive", "moss-green"),
    "blue": ("azure", "sky-blue", "sapphire"),
    "purple": ("lavender", "mauve", "grape"),
    "pink": ("fuchsia", "salmon", "blush"),
    "brown": ("tan", "mocha", "cinnamon"),
    "black": ("ebony", "inky", "charcoal-black"),
    "white": ("chalk-white", "milky", "paper-white"),
    "circle": ("round one", "ring shape", "orb"),
    "square": ("tile", "squared shape", "quad"),
    "triangle": ("trigon", "pyramid shape", "three-cornered shape"),
    "star": ("star figure", "pointy star", "star icon"),
    "hexagon": ("hexagonal tile", "six-cornered shape", "hexagon figure"),
    "diamond": ("tilted square", "diamond figure", "kite shape"),
    "small": ("mini", "petite", "teeny"),
    "large": ("giant", "oversized", "hefty"),
    "bigger": ("enlarged", "scaled up", "grown"),
    "smaller": ("shrunk", "scaled down", "reduced"),
    "male": ("man", "boy-ish"),
    "female": ("woman", "girl-ish"),
    "gender-neutral": ("genderless", "either-gender"),
}
VAL_PLACES: dict[str, tuple[str, ...]] = {
    "top left": ("at the top left", "in the top-left cell", "top-left-most"),
    "top": ("at the top", "in the top centre cell", "along the top, centred"),
    "top right": ("at the top right", "in the top-right cell", "top-right-most"),
    "left": ("on the left", "in the left-centre cell", "mid-left"),
    "center": ("in the center", "in the central cell", "dead centre"),
    "right": ("on the right", "in the right-centre cell", "mid-right"),
    "bottom left": ("at the bottom left", "in the bottom-left cell", "bottom-left-most"),
    "bottom": ("at the bottom", "in the bottom centre cell", "along the bottom, centred"),
    "bottom right": ("at the bottom right", "in the bottom-right cell", "bottom-right-most"),
}
VAL_DIRECTIONS: dict[str, tuple[str, ...]] = {
    "left": ("as far left as it goes", "to the leftmost cell"),
    "right": ("as far right as it goes", "to the rightmost cell"),
    "up": ("as high as it goes", "to the topmost cell"),
    "down": ("as low as it goes", "to the bottommost cell"),
}
VAL_TONES: dict[str, tuple[str, ...]] = {
    "none": ("no skin-tone modifier", "the stock yellow", "the standard yellow tone"),
    "light": ("a light tone", "porcelain skin", "a very light complexion"),
    "medium-light": ("a medium-light tone", "beige skin", "a light tan"),
    "medium": ("a medium tone", "tan skin", "a mid complexion"),
    "medium-dark": ("a medium-dark tone", "caramel skin", "a deep tan"),
    "dark": ("a dark tone", "ebony skin", "the darkest complexion"),
}
VAL_HAIR: dict[str, tuple[str, ...]] = {
    "none": ("the standard hair", "unstyled hair", "the usual hair"),
    "red hair": ("auburn hair", "copper hair", "a redhead look"),
    "curly hair": ("frizzy hair", "ringlets", "an afro-style curl"),
    "white hair": ("platinum hair", "snowy hair", "an old-age white"),
    "bald": ("a hairless head", "a clean-shaven scalp", "zero hair"),
}
VAL_VIEWS: dict[str, tuple[str, ...]] = {
    "face": ("a head-only view", "a face portrait", "the head alone"),
    "body": ("a full-length view", "the complete creature", "the animal from nose to tail"),
}

# The varied training styles' words: neither test nor val words.
TRAIN_SYNONYMS: dict[str, tuple[str, ...]] = {
    "red": ("cardinal", "blood-red", "rust-red", "wine-red", "fire-engine red", "raspberry"),
    "orange": ("mandarin", "peach", "flame-orange", "marigold", "burnt orange", "clementine"),
    "yellow": ("banana", "sunny", "saffron", "daffodil", "honey-yellow", "citrine"),
    "green": ("jade", "mint", "forest-green", "pine-green", "sage", "kelly green"),
    "blue": ("denim", "indigo", "ocean-blue", "cerulean", "cornflower blue", "teal-blue"),
    "purple": ("amethyst", "orchid", "eggplant", "mulberry", "heather", "deep purple"),
    "pink": ("flamingo", "coral-pink", "candy-pink", "hot pink", "carnation pink", "petal-pink"),
    "brown": ("walnut", "umber", "toffee", "hazel", "mahogany", "sepia"),
    "black": ("onyx", "raven", "soot-black", "obsidian", "midnight black", "ink-black"),
    "white": ("pearl", "cream-white", "frosty", "alabaster", "bone-white", "linen-white"),
    "circle": (
        "rounded form",
        "ball shape",
        "circular shape",
        "roundel",
        "circular badge",
        "round token",
    ),
    "square": (
        "square block",
        "cube shape",
        "boxy shape",
        "four-cornered shape",
        "square panel",
        "checker square",
    ),
    "triangle": (
        "triangle shape",
        "tri-shape",
        "arrowhead",
        "triangular figure",
        "delta shape",
        "triangular sign",
    ),
    "star": (
        "starry shape",
        "star sign",
        "star emblem",
        "star badge",
        "sheriff star",
        "spiky star",
    ),
    "hexagon": (
        "hex shape",
        "six-sider",
        "hexagonal shape",
        "hexagonal badge",
        "hexagonal panel",
        "hex cell",
    ),
    "diamond": (
        "gem shape",
        "rhomb",
        "diamond emblem",
        "diamond badge",
        "rhomboid",
        "diamond panel",
    ),
    "small": ("compact", "wee", "undersized", "miniature", "pint-sized", "modest-sized"),
    "large": ("jumbo", "massive", "extra-large", "enormous", "sizeable", "king-size"),
    "bigger": ("larger in size", "more massive", "bulkier", "magnified", "expanded", "upsized"),
    "smaller": (
        "more compact",
        "less bulky",
        "slimmer",
        "downsized",
        "diminished",
        "cut down in size",
    ),
    "male": ("masculine-looking", "male-presenting", "gentleman-like"),
    "female": ("feminine-looking", "female-presenting", "lady-like"),
    "gender-neutral": ("androgynous", "gender-free", "gender-inclusive"),
}
TRAIN_PLACES: dict[str, tuple[str, ...]] = {
    "top left": ("at the top left", "in the upper-left spot", "at the top-left position"),
    "top": ("at the top", "in the upper-middle spot", "at the top-centre position"),
    "top right": ("at the top right", "in the upper-right spot", "at the top-right position"),
    "left": ("on the left", "in the middle-left spot", "at the centre-left position"),
    "center": ("in the center", "in the middle spot", "at the centre position"),
    "right": ("on the right", "in the middle-right spot", "at the centre-right position"),
    "bottom left": ("at the bottom left", "in the lower-left spot", "at the bottom-left position"),
    "bottom": ("at the bottom", "in the lower-middle spot", "at the bottom-centre position"),
    "bottom right": (
        "at the bottom right",
        "in the lower-right spot",
        "at the bottom-right position",
    ),
}
TRAIN_DIRECTIONS: dict[str, tuple[str, ...]] = {
    "left": ("fully leftward", "against the left border"),
    "right": ("fully rightward", "against the right border"),
    "up": ("fully upward", "against the top border"),
    "down": ("fully downward", "against the bottom border"),
}
TRAIN_TONES: dict[str, tuple[str, ...]] = {
    "none": ("the unmodified yellow", "the base yellow colour", "a neutral yellow"),
    "light": ("a fair tone", "light-coloured skin", "an ivory tone"),
    "medium-light": ("a light-medium tone", "sand-coloured skin", "a wheat tone"),
    "medium": ("a middle tone", "bronze skin", "an average tone"),
    "medium-dark": ("a darker-medium tone", "chestnut skin", "an umber tone"),
    "dark": ("a deep tone", "dark-brown skin", "a rich dark tone"),
}
TRAIN_HAIR: dict[str, tuple[str, ...]] = {
    "none": ("the base hair", "plain hair", "unchanged hair"),
    "red hair": ("ginger locks", "reddish hair", "a red hairstyle"),
    "curly hair": ("curly locks", "a curly hairstyle", "wavy curls"),
    "white hair": ("grey locks", "a white hairstyle", "pale hair"),
    "bald": ("no hairstyle", "a bare head", "a hairless look"),
}
TRAIN_VIEWS: dict[str, tuple[str, ...]] = {
    "face": ("just the head", "a close-up of the face", "the face only"),
    "body": ("the full figure", "the whole body", "the complete animal"),
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


# The held-out val styles: no template shares a sentence shape with a test style's, and none
# matches TEMPLATE_WRITER_PATTERNS.
VAL_TEMPLATES: dict[str, _T] = {
    "spoken": {
        "colour": ("hmm, I'd go {new} on the {obj}", "what if the {obj} were {new}"),
        "shape": ("what if the {obj} became {a_new}", "hmm, {a_new} over the {obj}"),
        "size": ("what if the {obj} were {comparative}", "hmm, a {comparative} {obj} maybe"),
        "add": ("what if there was also {a_new_obj} {where}", "hmm, stick {a_new_obj} {where}"),
        "remove": ("what if the {obj} wasn't there", "hmm, take away the {obj}"),
        "move": ("what if the {obj} sat {where}", "hmm, nudge the {obj} {direction}"),
        "skin_tone": ("what if it had {new}", "hmm, {new} would be nicer"),
        "gender": ("what if it were the {new} one", "hmm, the {new} one would be better"),
        "hair": ("what if they had {new}", "hmm, {new} would suit them"),
        "recolour": ("what if it were {new}", "hmm, {a_new} one would be nicer"),
        "form": ("what if we saw {view}", "hmm, {view} would be better"),
    },
    "note": {
        "colour": ("{obj} -> {new}", "edit: {obj} recoloured {new}"),
        "shape": ("{obj} -> {new}", "edit: {obj} reshaped into {a_new}"),
        "size": ("{obj} -> {comparative}", "edit: {obj} resized, {comparative}"),
        "add": ("+ {a_new_obj} {where}", "edit: insert {a_new_obj} {where}"),
        "remove": ("- {obj}", "edit: {obj} deleted"),
        "move": ("{obj} -> {where}", "edit: {obj} relocated {where}"),
        "skin_tone": ("tone -> {new}", "edit: skin set to {new}"),
        "gender": ("gender -> {new}", "edit: {new} figure"),
        "hair": ("hair -> {new}", "edit: hair set to {new}"),
        "recolour": ("colour -> {new}", "edit: recoloured {new}"),
        "form": ("view -> {view}", "edit: {view}"),
    },
}
# The varied training styles: sentence shapes of neither the test nor the val styles.
TRAIN_TEMPLATES: dict[str, _T] = {
    "directive": {
        "colour": ("paint the {obj} {new}", "give the {obj} a {new} colour"),
        "shape": ("reshape the {obj} as {a_new}", "use {a_new} in place of the {obj}"),
        "size": ("resize the {obj} so it is {comparative}", "scale the {obj}, {comparative}"),
        "add": ("draw {a_new_obj} {where}", "include {a_new_obj} {where}"),
        "remove": ("erase the {obj}", "clear away the {obj}"),
        "move": ("slide the {obj} {where}", "reposition the {obj} {direction}"),
        "skin_tone": ("apply {new}", "use {new} for the skin"),
        "gender": ("switch the gender to {new}", "render it as {new}"),
        "hair": ("style the hair as {new}", "switch the hair to {new}"),
        "recolour": ("paint it {new}", "tint it {new}"),
        "form": ("display {view}", "zoom to {view}"),
    },
    "wish": {
        "colour": ("I need the {obj} to be {new}", "I'd prefer the {obj} coloured {new}"),
        "shape": ("I need {a_new} where the {obj} is", "I'd prefer {a_new} to the {obj}"),
        "size": ("I need the {obj} {comparative}", "I'd prefer the {obj} {comparative}"),
        "add": ("I need {a_new_obj} added {where}", "I'd prefer one more: {a_new_obj} {where}"),
        "remove": ("I need the {obj} gone", "I'd prefer no {obj} there"),
        "move": ("I need the {obj} {where}", "I'd prefer the {obj} placed {where}"),
        "skin_tone": ("I need {new} on it", "I'd prefer {new}"),
        "gender": ("I need it {new}", "I'd prefer it {new}"),
        "hair": ("I need them with {new}", "I'd prefer {new} on them"),
        "recolour": ("I need it {new}", "I'd prefer it coloured {new}"),
        "form": ("I need {view}", "I'd prefer {view}"),
    },
    "shorthand": {
        "colour": ("{obj} in {new} please", "{obj}: {new} colour"),
        "shape": ("{obj} as {a_new} please", "{obj} swapped to {a_new}"),
        "size": ("{obj} {comparative}, please", "{obj}, {comparative} now"),
        "add": ("extra {new_obj} {where} please", "new {new_obj} {where}"),
        "remove": ("{obj} out please", "{obj}: gone"),
        "move": ("{obj} {where}, please", "{obj}, {direction} please"),
        "skin_tone": ("{new} please", "skin: {new}"),
        "gender": ("{new} figure please", "gender: {new}"),
        "hair": ("{new} for them please", "hair: {new}"),
        "recolour": ("the {noun} in {new} please", "colour: {new}"),
        "form": ("{view} please", "{animal} - {view}"),
    },
    "outcome": {
        "colour": ("result: the {obj} turned {new}", "an image where the {obj} has become {new}"),
        "shape": (
            "result: {a_new} instead of the {obj}",
            "an image where {a_new} replaced the {obj}",
        ),
        "size": ("result: a {comparative} {obj}", "an image where the {obj} looks {comparative}"),
        "add": (
            "result: {a_new_obj} appears {where}",
            "an image that also has {a_new_obj} {where}",
        ),
        "remove": ("result: the {obj} has vanished", "an image without any {obj}"),
        "move": ("result: the {obj} ends up {where}", "an image where the {obj} has moved {where}"),
        "skin_tone": ("result: {new}", "an image of it with {new}"),
        "gender": ("result: a {new} figure", "an image of the {new} one"),
        "hair": ("result: someone with {new}", "an image of them with {new}"),
        "recolour": ("result: a {new} {noun}", "an image of the {noun} in {new}"),
        "form": ("result: {view} of the {animal}", "an image of the {animal} showing {view}"),
    },
}


@dataclass(frozen=True)
class Register:
    """One way of wording changes: its styles' templates (style → kind → templates) and its
    own words for attribute values, places, moves, skin tones, hair and views."""

    templates: Mapping[str, Mapping[str, Sequence[str]]]
    synonyms: Mapping[str, Sequence[str]]
    places: Mapping[str, Sequence[str]]
    directions: Mapping[str, Sequence[str]]
    tones: Mapping[str, Sequence[str]]
    hair: Mapping[str, Sequence[str]]
    views: Mapping[str, Sequence[str]]


TEST = Register(TEMPLATES, SYNONYMS, PLACES, DIRECTIONS, TONES, HAIR, VIEWS)
HELD_OUT_VAL = Register(
    VAL_TEMPLATES, VAL_SYNONYMS, VAL_PLACES, VAL_DIRECTIONS, VAL_TONES, VAL_HAIR, VAL_VIEWS
)
VARIED_TRAIN = Register(
    TRAIN_TEMPLATES,
    TRAIN_SYNONYMS,
    TRAIN_PLACES,
    TRAIN_DIRECTIONS,
    TRAIN_TONES,
    TRAIN_HAIR,
    TRAIN_VIEWS,
)
REGISTERS = (TEST, HELD_OUT_VAL, VARIED_TRAIN)
ALL_STYLES = TEST_STYLES + VAL_STYLES + TRAIN_STYLES


def register_of(style: str) -> Register:
    """The register a (non-plain) style belongs to."""
    for register in REGISTERS:
        if style in register.templates:
            return register
    raise ValueError(f"unknown style {style!r}; expected {PLAIN!r} or one of {ALL_STYLES}")


def word(canonical: str, rng: random.Random, style: str, p: float = 0.6) -> str:
    """``canonical`` or, in a non-plain style and with probability ``p``, one of the
    synonyms of the style's register."""
    if style == PLAIN:
        return canonical
    options = register_of(style).synonyms.get(canonical, ())
    if not options or rng.random() >= p:
        return canonical
    return rng.choice(options)


def _variant(field: str, key: str, rng: random.Random, style: str) -> str:
    """A phrase for ``key`` from the register's table ``field``: the canonical (first) one in
    the plain style, else any of the style's register."""
    table = getattr(TEST if style == PLAIN else register_of(style), field)
    if key not in table:
        raise ValueError(f"unknown value {key!r}; expected one of {sorted(table)}")
    options = table[key]
    return options[0] if style == PLAIN else rng.choice(options)


def place(position: str, rng: random.Random, style: str) -> str:
    """A phrase for a 3x3 cell ("at the top left"); canonical in the plain style."""
    return _variant("places", position, rng, style)


def tone(value: str, rng: random.Random, style: str) -> str:
    """A noun phrase for a skin tone; the plain style uses the bare CLDR word."""
    return (
        ("default" if value == "none" else value)
        if style == PLAIN
        else _variant("tones", value, rng, style)
    )


def hair(value: str, rng: random.Random, style: str) -> str:
    """A noun phrase for a hair style; the plain style uses a bare word."""
    if style == PLAIN:
        return {"none": "default", "bald": "bald"}.get(value, value.removesuffix(" hair"))
    return _variant("hair", value, rng, style)


def direction(value: str, rng: random.Random, style: str) -> str:
    """A phrase for moving to the ``left``/``right``/``up``/``down`` edge."""
    return _variant("directions", value, rng, style)


def view(value: str, rng: random.Random, style: str) -> str:
    """How to say "the face" or "the whole animal"."""
    return _variant("views", value, rng, style)


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
    else:
        options = register_of(style).templates[style].get(kind, ())
    usable = [t for t in options if _fields(t) <= values.keys()]
    if not usable:
        raise ValueError(f"no {style!r} template for kind {kind!r} fits slots {sorted(slots)}")
    return rng.choice(usable).format_map(values)


def looks_like_template(text: str) -> bool:
    """True when ``text`` has a shape a template writer would produce."""
    return any(p.match(text.strip().lower()) for p in TEMPLATE_WRITER_PATTERNS)


def assign_styles(n: int, rng: random.Random, styles: Sequence[str] = TEST_STYLES) -> list[str]:
    """``n`` of ``styles`` (default: the test styles), balanced (each style within one of the
    others) and shuffled."""
    picked = [styles[i % len(styles)] for i in range(n)]
    rng.shuffle(picked)
    return picked


# A world side's phrasing: its styles, and the label of its own random generator.
_PHRASINGS: dict[str, tuple[tuple[str, ...], str]] = {
    PLAIN: ((PLAIN,), ""),
    "held-out": (VAL_STYLES, "held-out-val"),
    "varied": (TRAIN_STYLES, "varied-train"),
}


def check_phrasing(option: str, value: str, allowed: Sequence[str]) -> None:
    """A world config's phrasing option ``option`` must be one of ``allowed``."""
    if value not in allowed:
        raise ValueError(f"{option} must be one of {tuple(allowed)}, got {value!r}")


def phrasing_styles(phrasing: str) -> list[str]:
    """The styles a side worded in ``phrasing`` (plain, held-out, varied) uses."""
    if phrasing not in _PHRASINGS:
        raise ValueError(f"phrasing must be one of {tuple(_PHRASINGS)}, got {phrasing!r}")
    return list(_PHRASINGS[phrasing][0])


def reworded_styles(phrasing: str, n: int, seed: int) -> tuple[list[str], random.Random] | None:
    """The styles of ``n`` queries worded in ``phrasing`` and the generator for their texts,
    or ``None`` for plain ones. Both come from a generator of their own, so a world's images
    and queries are those of the plain world of the same seed: only the texts differ."""
    styles = phrasing_styles(phrasing)
    if phrasing == PLAIN:
        return None
    rng = random.Random(f"{seed}:{_PHRASINGS[phrasing][1]}")
    return assign_styles(n, rng, styles), rng
