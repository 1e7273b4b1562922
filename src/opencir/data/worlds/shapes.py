"""ShapesCIR: procedurally rendered scenes of coloured shapes on a 3×3 grid.

A scene holds 1–5 objects, each a (shape, colour, size, cell) with at most one object per
cell. Rendering adds a little jitter (exact position, size, shade), so two images with the same
scene description differ in pixels but are the same answer to a query: ground truth is every
gallery image whose *attribute set* equals the edited reference scene, never "the one image we
built". Each test query comes with hard distractors (wrong object edited, edit applied partly or
to the wrong attribute) and, for a share of queries, a second rendering of the target.

Everything is drawn from one ``random.Random(seed)``; per-image jitter is seeded by the image
id, so rendering in worker processes gives the same bytes.

``palette="xkcd"`` paints the objects in the 949 named colours of the XKCD colour survey
instead of the eight of :data:`COLOURS` and names each in its alt text ("a small crimson
circle at the top left"): an unannotated image–text collection with a wide colour vocabulary
for pretraining, the way web images teach a real backbone its colour names. Such a world has
no queries (an edit's colour words are the eight).
"""

from __future__ import annotations

import functools
import logging
import math
import random
from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, NamedTuple

from PIL import Image, ImageDraw

from opencir.data.worlds import phrasing
from opencir.data.worlds.common import (
    DigestIndex,
    ImageRecord,
    QueryRecord,
    WorldInfo,
    WorldWriter,
    attribute_digest,
    build_world,
    config_params,
)

log = logging.getLogger(__name__)

WORLD = "shapescir"
SHAPES = ("circle", "square", "triangle", "star", "hexagon", "diamond")
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (215, 40, 40),
    "orange": (245, 140, 25),
    "yellow": (235, 205, 30),
    "green": (40, 155, 60),
    "blue": (40, 80, 215),
    "purple": (135, 60, 180),
    "pink": (240, 125, 185),
    "brown": (125, 80, 40),
}
PALETTES = ("canonical", "xkcd")


@functools.cache
def xkcd_colours() -> dict[str, tuple[int, int, int]]:
    """The XKCD colour survey's 949 colour names and their RGB (as matplotlib ships them)."""
    try:
        from matplotlib.colors import XKCD_COLORS, to_rgb
    except ImportError as err:  # pragma: no cover - matplotlib is in the eval extra
        raise ImportError("palette 'xkcd' needs matplotlib (pip install 'opencir[eval]')") from err
    return {
        name.removeprefix("xkcd:"): tuple(round(255 * c) for c in to_rgb(hex_code))
        for name, hex_code in XKCD_COLORS.items()
    }


@functools.cache
def palette_colours(palette: str) -> tuple[str, ...]:
    """The colour names of ``palette`` (one of :data:`PALETTES`)."""
    return tuple(COLOURS) if palette == "canonical" else tuple(xkcd_colours())


def colour_rgb(name: str) -> tuple[int, int, int]:
    """The RGB an object of colour ``name`` is painted in: a world colour, else a survey one."""
    rgb = COLOURS.get(name)
    return rgb if rgb is not None else xkcd_colours()[name]


SIZES = ("small", "large")
POSITIONS = (
    ("top left", "top", "top right"),
    ("left", "center", "right"),
    ("bottom left", "bottom", "bottom right"),
)
KINDS = ("colour", "shape", "size", "add", "remove", "move")
_CELL_OF = {name: (r, c) for r, row in enumerate(POSITIONS) for c, name in enumerate(row)}
_SUPERSAMPLE = 4


@dataclass(frozen=True)
class ShapesConfig:
    """Everything that changes a ShapesCIR world (``seed`` included)."""

    n_train: int = 10_000
    n_test: int = 2_000
    n_queries: int = 300
    n_val_queries: int = 100
    n_train_queries: int = 0
    seed: int = 0
    image_size: int = 64
    min_objects: int = 1
    max_objects: int = 5
    n_distractors: int = 3
    twin_rate: float = 0.3
    val_phrasing: str = phrasing.PLAIN  # or "held-out": val texts in the held-out val styles
    train_phrasing: str = phrasing.PLAIN  # or "varied": training queries in the varied styles
    palette: str = "canonical"  # or "xkcd": the survey's named colours, no queries

    def __post_init__(self) -> None:
        if not 1 <= self.min_objects < self.max_objects <= 9:
            raise ValueError(
                f"need 1 <= min_objects < max_objects <= 9, got {self.min_objects}, "
                f"{self.max_objects}"
            )
        if self.image_size < 16:
            raise ValueError(f"image_size must be at least 16 pixels, got {self.image_size}")
        counts = (self.n_train, self.n_test, self.n_queries, self.n_val_queries)
        if min(*counts, self.n_train_queries) < 0:
            raise ValueError("image and query counts must be >= 0")
        if self.n_distractors < 0 or not 0.0 <= self.twin_rate <= 1.0:
            raise ValueError("n_distractors must be >= 0 and twin_rate in [0, 1]")
        phrasing.check_phrasing("val_phrasing", self.val_phrasing, phrasing.VAL_PHRASINGS)
        phrasing.check_phrasing("train_phrasing", self.train_phrasing, phrasing.TRAIN_PHRASINGS)
        if self.palette not in PALETTES:
            raise ValueError(f"palette must be one of {PALETTES}, got {self.palette!r}")
        if self.palette != "canonical" and (
            self.n_queries or self.n_val_queries or self.n_train_queries
        ):
            raise ValueError(
                f"palette {self.palette!r} makes an image–text collection without queries (edit "
                "texts use the canonical colours): set the test, val and train query counts to 0 "
                "(--queries 0 --val-queries 0)"
            )

    @property
    def colours(self) -> tuple[str, ...]:
        """The colour names objects are painted in."""
        return palette_colours(self.palette)


class Obj(NamedTuple):
    """One object of a scene."""

    shape: str
    colour: str
    size: str
    position: str

    @property
    def cell(self) -> tuple[int, int]:
        return _CELL_OF[self.position]

    def as_dict(self) -> dict[str, str]:
        return self._asdict()


Scene = tuple[Obj, ...]


def make_scene(objects: Sequence[Obj]) -> Scene:
    """Objects in canonical (row-major) order; raises if two share a cell."""
    cells = [o.cell for o in objects]
    if len(set(cells)) != len(cells):
        raise ValueError(f"two objects share a cell: {objects}")
    return tuple(sorted(objects, key=lambda o: o.cell))


def scene_attributes(scene: Scene) -> dict[str, Any]:
    """The attribute metadata of a scene (also the key of ground-truth matching)."""
    return {"objects": [o.as_dict() for o in scene]}


def object_phrase(obj: Obj) -> str:
    """Canonical phrase for one object: "a large red circle at the top left"."""
    return (
        f"{phrasing.article(obj.size)} {obj.colour} {obj.shape} {phrasing.PLACES[obj.position][0]}"
    )


def describe_scene(scene: Scene) -> str:
    """The alt text of a scene: its objects in reading order."""
    parts = [object_phrase(o) for o in scene]
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


def object_regions(scene: Scene) -> list[dict[str, Any]]:
    """Each object as a region: its grid cell as a box (fractions of the image) and a caption
    without the place ("a large red circle"), for a region-level pretraining loss."""
    regions = []
    for obj in scene:
        row, col = obj.cell
        box = [col / 3, row / 3, (col + 1) / 3, (row + 1) / 3]
        caption = f"{phrasing.article(obj.size)} {obj.colour} {obj.shape}"
        regions.append({"box": [round(v, 6) for v in box], "caption": caption})
    return regions


def binding_swap(scene: Scene, rng: random.Random) -> Scene:
    """A scene with the same colours and shapes bound differently: a hard negative caption's.

    Two objects of different colours (and, where the scene has such a pair, different shapes)
    trade colours — "a red circle and a blue star" becomes "a blue circle and a red star" —
    so only the binding of colour to object tells the two scenes apart. A scene with one
    colour gets one object recoloured instead.
    """
    pairs = [(a, b) for i, a in enumerate(scene) for b in scene[i + 1 :] if a.colour != b.colour]
    unlike = [(a, b) for a, b in pairs if a.shape != b.shape]
    if pairs:
        a, b = rng.choice(unlike or pairs)
        rest = [o for o in scene if o not in (a, b)]
        return make_scene([*rest, a._replace(colour=b.colour), b._replace(colour=a.colour)])
    obj = rng.choice(scene)
    return _with(scene, obj, colour=_other_than("colour", obj.colour, rng=rng))


def shape_change(scene: Scene, rng: random.Random) -> Scene:
    """The scene with one object's shape changed: a hard negative caption that only the
    object's shape tells apart from the image."""
    obj = rng.choice(scene)
    return _with(scene, obj, shape=_other_than("shape", obj.shape, rng=rng))


def free_positions(scene: Scene) -> list[str]:
    taken = {o.position for o in scene}
    return [p for row in POSITIONS for p in row if p not in taken]


def random_object(
    rng: random.Random, position: str, colours: Sequence[str] = tuple(COLOURS)
) -> Obj:
    return Obj(rng.choice(SHAPES), rng.choice(colours), rng.choice(SIZES), position)


def random_scene(
    rng: random.Random, n_objects: int, colours: Sequence[str] = tuple(COLOURS)
) -> Scene:
    cells = rng.sample([p for row in POSITIONS for p in row], n_objects)
    return make_scene([random_object(rng, p, colours) for p in cells])


# ---------------------------------------------------------------------------------- rendering


def _polygon(shape: str, cx: float, cy: float, r: float) -> list[tuple[float, float]]:
    """Vertices of a polygonal shape inscribed in the circle (cx, cy, r)."""
    if shape == "square":
        h = r * 0.82
        return [(cx - h, cy - h), (cx + h, cy - h), (cx + h, cy + h), (cx - h, cy + h)]
    if shape == "diamond":
        return [(cx, cy - r), (cx + 0.7 * r, cy), (cx, cy + r), (cx - 0.7 * r, cy)]
    points, inner, offset = {"triangle": (3, None, 0.0), "hexagon": (6, None, 0.5)}.get(
        shape, (5, 0.45, 0.0)
    )
    step = 2 * math.pi / points
    out = []
    for i in range(points):
        a = -math.pi / 2 + (i + offset) * step
        out.append((cx + r * math.cos(a), cy + r * math.sin(a)))
        if inner:  # star: add the inner vertex between two tips
            b = a + step / 2
            out.append((cx + inner * r * math.cos(b), cy + inner * r * math.sin(b)))
    if shape == "triangle":  # centre the triangle's bounding box on the cell
        out = [(x, y + r * 0.25) for x, y in out]
    return out


def _shade(rgb: tuple[int, int, int], rng: random.Random, spread: int = 14) -> tuple[int, ...]:
    return tuple(max(0, min(255, c + rng.randint(-spread, spread))) for c in rgb)


def _draw_object(draw: ImageDraw.ImageDraw, obj: Obj, cell: float, rng: random.Random) -> None:
    row, col = obj.cell
    r = cell * (0.40 if obj.size == "large" else 0.22) * rng.uniform(0.92, 1.08)
    slack = max(0.0, cell / 2 - r - 0.04 * cell)
    cx = (col + 0.5) * cell + rng.uniform(-slack, slack)
    cy = (row + 0.5) * cell + rng.uniform(-slack, slack)
    fill = _shade(colour_rgb(obj.colour), rng)
    if obj.shape == "circle":
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=fill)
    else:
        draw.polygon(_polygon(obj.shape, cx, cy, r), fill=fill)


def render_scene(payload: tuple[Scene, int, str]) -> Image.Image:
    """Render ``(scene, image_size, jitter_seed)`` as an RGB image (supersampled, antialiased)."""
    scene, size, jitter_seed = payload
    rng = random.Random(jitter_seed)
    big = size * _SUPERSAMPLE
    image = Image.new("RGB", (big, big), _shade((236, 236, 232), rng, 6))
    draw = ImageDraw.Draw(image)
    for obj in scene:
        _draw_object(draw, obj, big / 3, rng)
    return image.reduce(_SUPERSAMPLE)  # box filter: exact for an integer supersample


# ---------------------------------------------------------------------------------- edits


_VALUES: dict[str, Sequence[str]] = {"colour": tuple(COLOURS), "shape": SHAPES, "size": SIZES}
_EDITED_FIELD = {"colour": "colour", "shape": "shape", "size": "size", "move": "position"}


def _with(scene: Scene, obj: Obj, **changes: str) -> Scene:
    return make_scene([*(o for o in scene if o != obj), obj._replace(**changes)])


def _other_than(field: str, *excluded: str, rng: random.Random) -> str:
    return rng.choice([v for v in _VALUES[field] if v not in excluded])


def apply_edit(scene: Scene, edit: dict[str, Any]) -> Scene:
    """The scene after ``edit`` (a dict as stored in the queries file)."""
    kind, new = edit["kind"], edit.get("new")
    obj = Obj(**edit["object"])
    if kind == "add":
        return make_scene([*scene, obj])
    if obj not in scene:
        raise ValueError(f"edit {edit} names an object not in the scene")
    rest = [o for o in scene if o != obj]
    if kind == "remove":
        return make_scene(rest)
    return make_scene([*rest, obj._replace(**{_EDITED_FIELD[kind]: new})])


def sample_edit(scene: Scene, kind: str, rng: random.Random) -> dict[str, Any]:
    """A random edit of ``kind`` that is applicable to ``scene``."""
    obj = rng.choice(scene)
    if kind in _VALUES:  # colour, shape, size
        new = _other_than(kind, getattr(obj, kind), rng=rng)
        return {"kind": kind, "object": obj.as_dict(), "new": new}
    if kind == "add":
        added = random_object(rng, rng.choice(free_positions(scene)))
        return {"kind": kind, "object": added.as_dict()}
    if kind == "remove":
        return {"kind": kind, "object": obj.as_dict()}
    return {"kind": "move", "object": obj.as_dict(), "new": rng.choice(free_positions(scene))}


def _object_counts(kind: str, cfg: ShapesConfig) -> range:
    """How many objects a reference may hold so that ``kind`` keeps it within bounds."""
    lo, hi = cfg.min_objects, cfg.max_objects
    return {"add": range(lo, hi), "remove": range(lo + 1, hi + 1)}.get(kind, range(lo, hi + 1))


def _attribute_misses(
    scene: Scene, obj: Obj, kind: str, new: str, rng: random.Random
) -> Iterator[Scene]:
    """Colour/shape/size: wrong object, wrong value, wrong attribute, or over-applied."""
    other = rng.choice([o for o in scene if o != obj] or [None])
    if other is not None and getattr(other, kind) != new:
        yield _with(scene, other, **{kind: new})
    if kind != "size":
        yield _with(scene, obj, **{kind: _other_than(kind, getattr(obj, kind), new, rng=rng)})
    wrong = rng.choice([f for f in _VALUES if f != kind])
    yield _with(scene, obj, **{wrong: _other_than(wrong, getattr(obj, wrong), rng=rng)})
    if other is not None:  # a second object changed too
        done = _with(scene, obj, **{kind: new})
        yield _with(done, other, **{kind: _other_than(kind, getattr(other, kind), rng=rng)})


def _add_misses(scene: Scene, obj: Obj, rng: random.Random) -> Iterator[Scene]:
    """Add: the right object in the wrong cell, or the right cell with one attribute wrong."""
    free = [p for p in free_positions(scene) if p != obj.position]
    if free:
        yield make_scene([*scene, obj._replace(position=rng.choice(free))])
    for f in _VALUES:
        yield make_scene([*scene, obj._replace(**{f: _other_than(f, getattr(obj, f), rng=rng)})])


def _remove_misses(scene: Scene, obj: Obj, rng: random.Random) -> Iterator[Scene]:
    """Remove: the wrong object removed, one too many removed, or recoloured instead."""
    others = [o for o in scene if o != obj]
    if others:
        other = rng.choice(others)
        yield make_scene([o for o in scene if o != other])
        yield make_scene([o for o in others if o != other])
    yield _with(scene, obj, colour=_other_than("colour", obj.colour, rng=rng))


def _move_misses(scene: Scene, obj: Obj, new: str, rng: random.Random) -> Iterator[Scene]:
    """Move: to the wrong cell, the wrong object moved there, or copied instead of moved."""
    free = [p for p in free_positions(scene) if p != new]
    others = [o for o in scene if o != obj]
    if free:
        yield _with(scene, obj, position=rng.choice(free))
    if others:
        yield _with(scene, rng.choice(others), position=new)
    yield make_scene([*scene, obj._replace(position=new)])


def _near_misses(scene: Scene, edit: dict[str, Any], rng: random.Random) -> Iterator[Scene]:
    """Scenes that look like the answer but are not (hard distractors for ``edit``)."""
    kind, obj, new = edit["kind"], Obj(**edit["object"]), edit.get("new")
    if kind in _VALUES:
        return _attribute_misses(scene, obj, kind, new, rng)
    if kind == "add":
        return _add_misses(scene, obj, rng)
    if kind == "remove":
        return _remove_misses(scene, obj, rng)
    return _move_misses(scene, obj, new, rng)


def distractor_scenes(
    scene: Scene,
    edit: dict[str, Any],
    n: int,
    cfg: ShapesConfig,
    rng: random.Random,
    forbidden: Collection[int] = (),
) -> list[Scene]:
    """Up to ``n`` distinct near misses, none equal to the reference or the target."""
    target = apply_edit(scene, edit)
    seen = {attribute_digest(scene_attributes(s)) for s in (scene, target)} | set(forbidden)
    out = []
    for cand in _near_misses(scene, edit, rng):
        digest = attribute_digest(scene_attributes(cand))
        if cfg.min_objects <= len(cand) <= cfg.max_objects and digest not in seen:
            seen.add(digest)
            out.append(cand)
    rng.shuffle(out)
    return out[:n]


# ---------------------------------------------------------------------------------- texts

# Which attributes may name an object, most preferred first (the shape noun is always said).
_TEST_PARTS = (
    (),
    ("colour",),
    ("size",),
    ("size", "colour"),
    ("position",),
    ("colour", "position"),
    ("size", "colour", "position"),
)
_PLAIN_PARTS = (
    ("colour",),
    ("size", "colour"),
    ("colour", "position"),
    ("size", "colour", "position"),
)


def _naming_parts(obj: Obj, scene: Scene, avoid: str | None, style: str) -> tuple[str, ...]:
    """The first attribute set that singles ``obj`` out, avoiding the edited attribute."""
    order = _PLAIN_PARTS if style == phrasing.PLAIN else _TEST_PARTS
    for allow_avoided in (False, True):
        for parts in order:
            if avoid in parts and not allow_avoided:
                continue
            same = [
                o
                for o in scene
                if o.shape == obj.shape and all(getattr(o, a) == getattr(obj, a) for a in parts)
            ]
            if len(same) == 1:
                return parts
    raise ValueError(f"object {obj} is not in scene {scene}")


def _noun_phrase(obj: Obj, parts: Sequence[str], style: str, rng: random.Random) -> str:
    words = [phrasing.word(getattr(obj, a), rng, style) for a in ("size", "colour") if a in parts]
    phrase = " ".join([*words, phrasing.word(obj.shape, rng, style)])
    if "position" in parts:
        phrase += " " + phrasing.place(obj.position, rng, style)
    return phrase


def _direction(src: str, dst: str) -> str | None:
    """ "left"/"right"/"up"/"down" when ``dst`` is the edge cell straight from ``src``."""
    (r0, c0), (r1, c1) = _CELL_OF[src], _CELL_OF[dst]
    if r0 == r1 and c1 in (0, 2):
        return "left" if c1 == 0 else "right"
    if c0 == c1 and r1 in (0, 2):
        return "up" if r1 == 0 else "down"
    return None


def edit_text(scene: Scene, edit: dict[str, Any], style: str, rng: random.Random) -> str:
    """The modification text for ``edit`` of ``scene`` in ``style``."""
    kind, obj, new = edit["kind"], Obj(**edit["object"]), edit.get("new")
    slots: dict[str, str] = {}
    if kind == "add":
        slots["new_obj"] = _noun_phrase(obj, ("size", "colour"), style, rng)
        slots["where"] = phrasing.place(obj.position, rng, style)
    else:
        parts = _naming_parts(obj, scene, _EDITED_FIELD.get(kind), style)
        slots["obj"] = _noun_phrase(obj, parts, style, rng)
        if not parts:
            slots["bare"] = slots["obj"]
    if kind in ("colour", "shape"):
        old = getattr(obj, kind)
        slots.update(new=phrasing.word(new, rng, style), old=phrasing.word(old, rng, style))
    elif kind == "size":
        comparative = phrasing.word("bigger" if new == "large" else "smaller", rng, style)
        slots.update(new=new, comparative=comparative)
    elif kind == "move":
        plain = style == phrasing.PLAIN
        slots["where"] = f"to the {new}" if plain else phrasing.place(new, rng, style)
        way = _direction(obj.position, new)
        if way and not plain:
            slots["direction"] = phrasing.direction(way, rng, style)
    return phrasing.paraphrase(kind, slots, style, rng)


# ---------------------------------------------------------------------------------- the world


@dataclass(frozen=True)
class _Group:
    """One query before ids are known: reference, target (1–2 renderings), near misses."""

    reference: Scene
    edit: dict[str, Any]
    target: Scene
    copies: int
    distractors: tuple[Scene, ...]
    text: str
    style: str


def _digest(scene: Scene) -> int:
    return attribute_digest(scene_attributes(scene))


def _sample_group(
    cfg: ShapesConfig, kind: str, style: str, twin: bool, rng: random.Random, forbidden: set[int]
) -> _Group:
    """A query of ``kind`` whose reference and target avoid ``forbidden`` scenes."""
    while True:
        reference = random_scene(rng, rng.choice(_object_counts(kind, cfg)))
        edit = sample_edit(reference, kind, rng)
        target = apply_edit(reference, edit)
        if _digest(reference) not in forbidden and _digest(target) not in forbidden:
            break
    near = distractor_scenes(reference, edit, cfg.n_distractors, cfg, rng, forbidden)
    text = edit_text(reference, edit, style, rng)
    return _Group(reference, edit, target, 2 if twin else 1, tuple(near), text, style)


def _plan_groups(
    cfg: ShapesConfig, n: int, styles: Sequence[str], rng: random.Random, forbidden: set[int]
) -> list[_Group]:
    """``n`` queries with kinds balanced over :data:`KINDS` and a ``twin_rate`` share of twins."""
    kinds = [KINDS[i % len(KINDS)] for i in range(n)]
    rng.shuffle(kinds)
    n_twins = min(n, max(1, round(cfg.twin_rate * n))) if cfg.twin_rate > 0 else 0
    twins = set(rng.sample(range(n), n_twins))
    return [
        _sample_group(cfg, k, styles[i], i in twins, rng, forbidden) for i, k in enumerate(kinds)
    ]


def _image_id(side: str, index: int, n: int) -> str:
    return f"{side}-{index:0{max(6, len(str(n - 1)))}d}"


@dataclass(frozen=True)
class _Placed:
    """Query groups placed at random image indices of one side."""

    scenes: dict[int, Scene]
    queries: list[tuple[str, _Group, tuple[str, ...]]]  # (reference id, group, distractor ids)


def _place_groups(
    groups: Sequence[_Group], side: str, n_images: int, rng: random.Random
) -> _Placed:
    need = sum(1 + g.copies + len(g.distractors) for g in groups)
    if need > n_images:
        raise ValueError(
            f"ShapesCIR: {len(groups)} {side}-side queries need {need} images (reference, "
            f"target, distractors) but n_{side}={n_images}; raise n_{side} or ask for fewer queries"
        )
    slots = iter(rng.sample(range(n_images), need))
    scenes: dict[int, Scene] = {}

    def put(scene: Scene) -> str:
        index = next(slots)
        scenes[index] = scene
        return _image_id(side, index, n_images)

    queries = []
    for g in groups:
        ref = put(g.reference)
        for _ in range(g.copies):
            put(g.target)
        queries.append((ref, g, tuple(put(d) for d in g.distractors)))
    return _Placed(scenes, queries)


def _filler(cfg: ShapesConfig, rng: random.Random, forbidden: set[int]) -> Scene:
    """A random scene not in ``forbidden`` (train scenes never repeat a test scene)."""
    while True:
        scene = random_scene(rng, rng.randint(cfg.min_objects, cfg.max_objects), cfg.colours)
        if _digest(scene) not in forbidden:
            return scene


def _side_images(
    cfg: ShapesConfig,
    side: str,
    n_images: int,
    placed: _Placed,
    rng: random.Random,
    forbidden: set[int],
) -> Iterator[tuple[ImageRecord, tuple[Scene, int, str]]]:
    """Every image of one side in id order: placed query scenes, random scenes elsewhere."""
    for index in range(n_images):
        scene = placed.scenes.get(index) or _filler(cfg, rng, forbidden)
        image_id = _image_id(side, index, n_images)
        record = ImageRecord(image_id, describe_scene(scene), scene_attributes(scene), side)
        yield record, (scene, cfg.image_size, f"{cfg.seed}:{image_id}")


def _query_records(split: str, placed: _Placed, index: DigestIndex) -> Iterator[QueryRecord]:
    """Final queries: targets are *every* image of the side whose scene equals the target."""
    for number, (ref, g, distractors) in enumerate(placed.queries):
        targets = index.matches(scene_attributes(g.target), exclude=ref)
        if len(targets) < g.copies:
            raise RuntimeError(f"ShapesCIR bug: target of query {number} missing from gallery")
        yield QueryRecord(
            f"{split}-q{number:05d}",
            ref,
            g.text,
            targets,
            g.edit["kind"],
            g.style,
            g.edit,
            distractors,
        )


class _SplitPlan(NamedTuple):
    """The queries one split places on a side: its name and each query's phrasing style;
    ``reworded``: styles and a generator to reword the planned texts with (held-out val)."""

    split: str
    styles: Sequence[str]
    reworded: tuple[Sequence[str], random.Random] | None = None


def _reworded(groups: list[_Group], plan: _SplitPlan) -> list[_Group]:
    """``groups`` with texts in the plan's reworded styles (same queries, other words)."""
    if plan.reworded is None:
        return groups
    styles, rng = plan.reworded
    return [
        replace(g, text=edit_text(g.reference, g.edit, style, rng), style=style)
        for g, style in zip(groups, styles, strict=True)
    ]


def _write_side(
    writer: WorldWriter,
    cfg: ShapesConfig,
    side: str,
    plans: Sequence[_SplitPlan],
    rng: random.Random,
    forbidden: set[int],
) -> DigestIndex:
    """Plan, render and write one side (images, then the queries of each split placed on it);
    return its digest index."""
    n_images = cfg.n_test if side == "test" else cfg.n_train
    groups = [
        _reworded(_plan_groups(cfg, len(p.styles), p.styles, rng, forbidden), p) for p in plans
    ]
    placed = _place_groups([g for split in groups for g in split], side, n_images, rng)
    index = DigestIndex()
    images = _side_images(cfg, side, n_images, placed, rng, forbidden)
    writer.write_images(index.tap(images), render_scene, n_images, f"ShapesCIR {side}")
    start = 0
    for plan, split_groups in zip(plans, groups, strict=True):
        own = _Placed(placed.scenes, placed.queries[start : start + len(split_groups)])
        start += len(split_groups)
        writer.write_queries(plan.split, _query_records(plan.split, own, index))
    return index


def world_params(cfg: ShapesConfig) -> dict[str, Any]:
    """What ``world.json`` records: the config (minus seed) and the world's vocabulary."""
    params = config_params(cfg)
    params.update(
        generator="opencir.data.worlds.shapes",
        shapes=list(SHAPES),
        colours=list(cfg.colours),
        sizes=list(SIZES),
        kinds=list(KINDS),
        styles={
            "test": list(phrasing.TEST_STYLES),
            "val": phrasing.phrasing_styles(cfg.val_phrasing),
            "train": phrasing.phrasing_styles(cfg.train_phrasing),
        },
    )
    return params


def write_shapes_world(
    root: str | Path,
    cfg: ShapesConfig,
    *,
    workers: int = 0,
    progress: bool = True,
    overwrite: bool = False,
) -> WorldInfo:
    """Write the ShapesCIR world described by ``cfg`` at ``root`` (no-op if already there)."""

    def populate(writer: WorldWriter) -> None:
        rng = random.Random(cfg.seed)
        styles = phrasing.assign_styles(cfg.n_queries, rng)
        test = _write_side(writer, cfg, "test", [_SplitPlan("test", styles)], rng, set())
        val = [phrasing.PLAIN] * cfg.n_val_queries
        reworded = phrasing.reworded_styles(cfg.val_phrasing, cfg.n_val_queries, cfg.seed)
        train_side = [_SplitPlan("val", val, reworded)]
        if cfg.n_train_queries:  # ground truth for supervised training, apart from val
            train = [phrasing.PLAIN] * cfg.n_train_queries
            reworded = phrasing.reworded_styles(cfg.train_phrasing, cfg.n_train_queries, cfg.seed)
            train_side.append(_SplitPlan("train", train, reworded))
        _write_side(writer, cfg, "train", train_side, rng, test.digests())

    return build_world(
        root,
        WORLD,
        cfg.seed,
        world_params(cfg),
        populate,
        workers=workers,
        progress=progress,
        overwrite=overwrite,
    )


def generate_shapes_world(
    root: str | Path,
    n_train: int = 10_000,
    n_test: int = 2_000,
    n_queries: int = 300,
    seed: int = 0,
    image_size: int = 64,
    progress: bool = True,
    *,
    n_val_queries: int = 100,
    workers: int = 0,
    overwrite: bool = False,
    **options: Any,
) -> WorldInfo:
    """Generate ShapesCIR at ``root``; ``options`` are further :class:`ShapesConfig` fields.

    ``workers`` > 1 renders in that many processes (same bytes as in-process rendering).
    """
    cfg = ShapesConfig(
        n_train=n_train,
        n_test=n_test,
        n_queries=n_queries,
        n_val_queries=n_val_queries,
        seed=seed,
        image_size=image_size,
        **options,
    )
    return write_shapes_world(root, cfg, workers=workers, progress=progress, overwrite=overwrite)
