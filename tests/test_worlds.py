"""The miniature worlds (ShapesCIR, EmojiCIR) and their benchmark adapter."""

from __future__ import annotations

import json
import os
import random
import shutil
import string
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from opencir.cli import main
from opencir.data.worlds import emoji as emoji_world
from opencir.data.worlds import (
    generate_emoji_world,
    generate_shapes_world,
    phrasing,
    read_world_info,
    shapes,
)
from opencir.data.worlds.triplets import export_world_triplets
from opencir.eval.benchmark import BenchmarkSplit
from opencir.eval.benchmarks.common import MalformedDatasetFileError, MissingDatasetFileError
from opencir.eval.benchmarks.worlds import load_world_split

SMALL_SHAPES = dict(
    n_train=60, n_test=70, n_queries=12, n_val_queries=4, n_train_queries=5, progress=False
)
SMALL_EMOJI = dict(n_train=50, n_test=60, n_queries=24, n_val_queries=6, progress=False)


def _font_or_skip() -> Path:
    try:
        return emoji_world.find_font()
    except emoji_world.FontNotFoundError as err:
        pytest.skip(str(err))


@pytest.fixture(scope="module")
def shapes_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("worlds") / "shapes"
    generate_shapes_world(root, seed=3, **SMALL_SHAPES)
    return root


@pytest.fixture(scope="module")
def emoji_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    _font_or_skip()
    root = tmp_path_factory.mktemp("worlds") / "emoji"
    generate_emoji_world(root, seed=5, **SMALL_EMOJI)
    return root


def _jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def _images(root: Path) -> dict[str, dict[str, Any]]:
    return {r["id"]: r for r in _jsonl(root / "images.jsonl")}


def _all_bytes(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


# ---------------------------------------------------------------------------- layout, determinism


@pytest.mark.parametrize("which", ["shapes", "emoji"])
def test_layout(which: str, shapes_root: Path, request: pytest.FixtureRequest) -> None:
    root = shapes_root if which == "shapes" else request.getfixturevalue("emoji_root")
    info = read_world_info(root)
    images = _images(root)
    assert info.counts["images.test"] == sum(r["split"] == "test" for r in images.values())
    assert info.counts["images.train"] == sum(r["split"] == "train" for r in images.values())
    for row in images.values():
        assert set(row) >= {"id", "file", "alt_text", "attributes", "split"}
        assert row["alt_text"] and (root / row["file"]).is_file()
    for split in ("test", "val"):
        rows = _jsonl(root / f"queries.{split}.jsonl")
        assert len(rows) == info.counts[f"queries.{split}"] > 0
        for q in rows:
            assert set(q) >= {"id", "reference", "text", "targets", "kind", "style"}
    assert not [p for p in root.parent.iterdir() if ".partial-" in p.name]


def test_shapes_deterministic_by_seed(tmp_path: Path) -> None:
    generate_shapes_world(tmp_path / "a", seed=11, **SMALL_SHAPES)
    generate_shapes_world(tmp_path / "b", seed=11, workers=2, **SMALL_SHAPES)  # same bytes
    generate_shapes_world(tmp_path / "c", seed=12, **SMALL_SHAPES)
    a, b, c = (_all_bytes(tmp_path / n) for n in "abc")
    assert a == b
    assert a["images.jsonl"] != c["images.jsonl"]


def test_shapes_at_another_image_size_is_the_same_world(tmp_path: Path) -> None:
    generate_shapes_world(tmp_path / "64", seed=11, **SMALL_SHAPES)
    generate_shapes_world(tmp_path / "128", seed=11, image_size=128, **SMALL_SHAPES)
    small, large = _all_bytes(tmp_path / "64"), _all_bytes(tmp_path / "128")
    listed = [name for name in small if name.endswith(".jsonl")]
    assert "images.jsonl" in listed and "queries.test.jsonl" in listed
    assert all(small[name] == large[name] for name in listed)
    first = json.loads(small["images.jsonl"].splitlines()[0])["file"]
    with Image.open(tmp_path / "64" / first) as a, Image.open(tmp_path / "128" / first) as b:
        assert (a.size, b.size) == ((64, 64), (128, 128))
        pooled = np.asarray(b.convert("RGB"), dtype=float).reshape(64, 2, 64, 2, 3).mean((1, 3))
        assert np.abs(pooled - np.asarray(a.convert("RGB"), dtype=float)).mean() < 2.0


def test_emoji_deterministic_by_seed(tmp_path: Path, emoji_root: Path) -> None:
    generate_emoji_world(tmp_path / "again", seed=5, **SMALL_EMOJI)
    assert _all_bytes(tmp_path / "again") == _all_bytes(emoji_root)


def test_rerun_is_noop_and_other_args_refuse(tmp_path: Path) -> None:
    root = tmp_path / "w"
    first = generate_shapes_world(root, seed=1, **SMALL_SHAPES)
    stamp = (root / "world.json").stat().st_mtime_ns
    again = generate_shapes_world(root, seed=1, **SMALL_SHAPES)
    assert (root / "world.json").stat().st_mtime_ns == stamp and again.counts == first.counts
    with pytest.raises(FileExistsError, match="overwrite=True"):
        generate_shapes_world(root, seed=2, **SMALL_SHAPES)
    generate_shapes_world(root, seed=2, overwrite=True, **SMALL_SHAPES)
    assert read_world_info(root).seed == 2
    (tmp_path / "user").mkdir()
    (tmp_path / "user" / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not a world folder"):
        generate_shapes_world(tmp_path / "user", overwrite=True, **SMALL_SHAPES)


def test_a_world_folder_gets_the_usual_mode(tmp_path: Path) -> None:
    previous = os.umask(0o022)
    try:
        generate_shapes_world(tmp_path / "w", **SMALL_SHAPES)
    finally:
        os.umask(previous)
    assert (tmp_path / "w").stat().st_mode & 0o777 == 0o755  # not mkdtemp's 0o700


def test_too_few_images_for_queries(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="raise n_test"):
        generate_shapes_world(tmp_path / "w", n_train=10, n_test=10, n_queries=20, progress=False)


# ---------------------------------------------------------------------------- ShapesCIR semantics


def _scene_key(objects: list[dict[str, str]]) -> tuple:
    return tuple(sorted((o["position"], o["shape"], o["colour"], o["size"]) for o in objects))


def _apply(objects: list[dict[str, str]], edit: dict[str, Any]) -> list[dict[str, str]]:
    """An independent re-implementation of the six ShapesCIR edits."""
    obj, kind = edit["object"], edit["kind"]
    if kind == "add":
        return [*objects, obj]
    assert obj in objects, "the edited object must be in the reference"
    rest = [o for o in objects if o != obj]
    if kind == "remove":
        return rest
    field = {"move": "position"}.get(kind, kind)
    return [*rest, {**obj, field: edit["new"]}]


def test_shapes_sides_are_disjoint(shapes_root: Path) -> None:
    images = _images(shapes_root)
    keys = {
        s: {_scene_key(r["attributes"]["objects"]) for r in images.values() if r["split"] == s}
        for s in ("train", "test")
    }
    assert keys["train"] and keys["test"] and not keys["train"] & keys["test"]
    assert all(r["id"].startswith(r["split"]) for r in images.values())


@pytest.mark.parametrize("split,side", [("test", "test"), ("val", "train"), ("train", "train")])
def test_shapes_targets_are_exactly_the_edited_scenes(shapes_root: Path, split, side) -> None:
    images = _images(shapes_root)
    gallery = {
        i: _scene_key(r["attributes"]["objects"]) for i, r in images.items() if r["split"] == side
    }
    for q in _jsonl(shapes_root / f"queries.{split}.jsonl"):
        ref = images[q["reference"]]["attributes"]["objects"]
        wanted = _scene_key(_apply(ref, q["edit"]))
        assert wanted != _scene_key(ref)  # the reference never satisfies its query
        assert q["kind"] == q["edit"]["kind"] and 1 <= len(_apply(ref, q["edit"])) <= 5
        matching = {i for i, key in gallery.items() if key == wanted} - {q["reference"]}
        assert set(q["targets"]) == matching and q["reference"] not in q["targets"]


def test_shapes_training_queries_are_plain_and_apart_from_val(shapes_root: Path, tmp_path) -> None:
    train, val = (_jsonl(shapes_root / f"queries.{s}.jsonl") for s in ("train", "val"))
    assert len(train) == 5 and {q["style"] for q in train} == {phrasing.PLAIN}
    placed = [{i for q in qs for i in (q["reference"], *q["distractors"])} for qs in (train, val)]
    assert not placed[0] & placed[1]  # each query has its own reference and distractors
    out = export_world_triplets(shapes_root, "train", tmp_path / "gt")
    rows = _jsonl(out / "triplets.jsonl")
    assert len(rows) == sum(len(q["targets"]) for q in train)
    assert {r["provenance"]["split"] for r in rows} == {"train"}


def test_shapes_multiple_ground_truths_and_kinds(shapes_root: Path) -> None:
    queries = _jsonl(shapes_root / "queries.test.jsonl")
    assert any(len(q["targets"]) > 1 for q in queries)
    assert {q["kind"] for q in queries} == set(shapes.KINDS)


def test_shapes_distractors_are_near_misses(shapes_root: Path) -> None:
    images = _images(shapes_root)
    queries = _jsonl(shapes_root / "queries.test.jsonl")
    assert sum(len(q["distractors"]) for q in queries) >= 2 * len(queries)
    for q in queries:
        target = set(_scene_key(images[q["targets"][0]]["attributes"]["objects"]))
        for d in q["distractors"]:
            assert d not in q["targets"] and d != q["reference"]
            assert images[d]["split"] == "test"
            near = set(_scene_key(images[d]["attributes"]["objects"]))
            assert near != target and len(near ^ target) <= 4  # one or two objects differ


def test_shapes_alt_text_describes_every_object(shapes_root: Path) -> None:
    for row in list(_images(shapes_root).values())[:30]:
        for o in row["attributes"]["objects"]:
            assert f"{o['size']} {o['colour']} {o['shape']}" in row["alt_text"]


def test_shapes_images_show_the_scene(shapes_root: Path) -> None:
    row = next(iter(_images(shapes_root).values()))
    image = Image.open(shapes_root / row["file"])
    assert image.size == (64, 64) and image.mode == "RGB"
    scene = shapes.make_scene([shapes.Obj(**o) for o in row["attributes"]["objects"]])
    rendered = shapes.render_scene((scene, 64, "x"))
    assert np.asarray(rendered).std() > 10  # objects stand out from the background


# ---------------------------------------------------------------------------- phrasing


def test_test_phrasings_differ_from_the_template_writer(shapes_root: Path, emoji_root: Path):
    for root in (shapes_root, emoji_root):
        test = _jsonl(root / "queries.test.jsonl")
        val = _jsonl(root / "queries.val.jsonl")
        assert {q["style"] for q in test} <= set(phrasing.TEST_STYLES)
        assert not [q["text"] for q in test if phrasing.looks_like_template(q["text"])]
        assert all(q["style"] == phrasing.PLAIN for q in val)
        assert all(phrasing.looks_like_template(q["text"]) for q in val)  # the check has teeth
    styles = Counter(q["style"] for q in _jsonl(shapes_root / "queries.test.jsonl"))
    assert set(styles) == set(phrasing.TEST_STYLES)


def test_no_test_style_template_can_match_the_writer_patterns() -> None:
    rng = random.Random(0)
    for _ in range(300):
        scene = shapes.random_scene(rng, rng.randint(2, 4))
        edit = shapes.sample_edit(scene, rng.choice(shapes.KINDS), rng)
        plain = shapes.edit_text(scene, edit, phrasing.PLAIN, rng)
        assert phrasing.looks_like_template(plain), plain
        for style in phrasing.TEST_STYLES:
            text = shapes.edit_text(scene, edit, style, rng)
            assert not phrasing.looks_like_template(text) and text != plain, text


def _template_shapes(templates: Mapping[str, Mapping[str, Sequence[str]]]) -> set[str]:
    """Every template with its slots blanked: the sentence shapes a register uses."""
    return {
        string.Formatter().vformat(t, (), _Blank())
        for kinds in templates.values()
        for options in kinds.values()
        for t in options
    }


class _Blank(dict):
    def __missing__(self, key: str) -> str:
        return "_"


def _words(register: phrasing.Register, field: str) -> dict[str, set[str]]:
    """Per key, the phrases of one table of a register beyond the canonical (first) one."""
    table = getattr(register, field)
    first = field != "synonyms"  # synonym tables hold no canonical word
    return {k: set(v[1:] if first else v) for k, v in table.items()}


@pytest.mark.parametrize(
    "one, other",
    [
        (phrasing.HELD_OUT_VAL, phrasing.TEST),
        (phrasing.VARIED_TRAIN, phrasing.TEST),
        (phrasing.VARIED_TRAIN, phrasing.HELD_OUT_VAL),
    ],
)
def test_the_registers_share_only_the_canonical_words(one, other) -> None:
    fields = ("synonyms", "places", "directions", "tones", "hair", "views")
    for field in fields:
        mine, theirs = _words(one, field), _words(other, field)
        assert mine.keys() == theirs.keys(), field
        all_theirs = set().union(*theirs.values())
        for key, phrases in mine.items():
            assert not phrases & all_theirs, (field, key, phrases & all_theirs)
    assert not _template_shapes(one.templates) & _template_shapes(other.templates)


@pytest.mark.parametrize("register", phrasing.REGISTERS)
def test_every_style_words_every_kind_of_change(register: phrasing.Register) -> None:
    for style, kinds in register.templates.items():
        assert kinds.keys() == phrasing.PLAIN_TEMPLATES.keys(), style
        assert all(kinds.values()), style


def test_no_held_out_or_varied_text_looks_like_a_template_writer_text() -> None:
    rng = random.Random(1)
    for _ in range(300):
        scene = shapes.random_scene(rng, rng.randint(2, 4))
        edit = shapes.sample_edit(scene, rng.choice(shapes.KINDS), rng)
        for style in phrasing.VAL_STYLES + phrasing.TRAIN_STYLES:
            text = shapes.edit_text(scene, edit, style, rng)
            assert not phrasing.looks_like_template(text), text


@pytest.mark.parametrize("which", ["shapes", "emoji"])
def test_a_held_out_val_side_rewords_the_same_val_queries(which: str, tmp_path: Path) -> None:
    if which == "emoji":
        _font_or_skip()
    generate, small, seed = (
        (generate_shapes_world, SMALL_SHAPES, 3)
        if which == "shapes"
        else (generate_emoji_world, SMALL_EMOJI, 5)
    )
    plain = generate(tmp_path / "plain", seed=seed, **small)
    held = generate(tmp_path / "held", seed=seed, val_phrasing="held-out", **small)
    a, b = _all_bytes(plain.root), _all_bytes(held.root)
    different = {k for k in a.keys() | b.keys() if a.get(k) != b.get(k)}
    assert different == {"queries.val.jsonl", "world.json"}  # images and test queries alike
    assert "val_phrasing" not in plain.params and held.params["val_phrasing"] == "held-out"
    assert held.params["styles"]["val"] == list(phrasing.VAL_STYLES)
    before = _jsonl(plain.root / "queries.val.jsonl")
    after = _jsonl(held.root / "queries.val.jsonl")
    assert [(q["reference"], q["targets"], q["edit"]) for q in before] == [
        (q["reference"], q["targets"], q["edit"]) for q in after
    ]
    assert {q["style"] for q in after} <= set(phrasing.VAL_STYLES)
    assert all(x["text"] != y["text"] for x, y in zip(before, after, strict=True))
    with pytest.raises(ValueError, match="val_phrasing must be one of"):
        generate(tmp_path / "bad", seed=seed, val_phrasing="shifted", **small)


def test_varied_training_queries_reword_the_same_training_queries(tmp_path: Path) -> None:
    plain = generate_shapes_world(tmp_path / "plain", seed=3, **SMALL_SHAPES)
    varied = generate_shapes_world(
        tmp_path / "varied", seed=3, train_phrasing="varied", **SMALL_SHAPES
    )
    a, b = _all_bytes(plain.root), _all_bytes(varied.root)
    assert {k for k in a if a[k] != b[k]} == {"queries.train.jsonl", "world.json"}
    assert varied.params["styles"]["train"] == list(phrasing.TRAIN_STYLES)
    before = _jsonl(plain.root / "queries.train.jsonl")
    after = _jsonl(varied.root / "queries.train.jsonl")
    assert [(q["reference"], q["targets"]) for q in before] == [
        (q["reference"], q["targets"]) for q in after
    ]
    assert {q["style"] for q in after} <= set(phrasing.TRAIN_STYLES)
    assert all(x["text"] != y["text"] for x, y in zip(before, after, strict=True))
    with pytest.raises(ValueError, match="train_phrasing must be one of"):
        generate_shapes_world(tmp_path / "bad", seed=3, train_phrasing="held-out", **SMALL_SHAPES)


# ---------------------------------------------------------------------------- EmojiCIR


def test_emoji_glyphs_render_non_blank(emoji_root: Path) -> None:
    for row in _images(emoji_root).values():
        pixels = np.asarray(Image.open(emoji_root / row["file"]).convert("RGB"), dtype=np.int16)
        assert pixels.shape == (64, 64, 3)
        ink = (np.abs(pixels - 255).sum(axis=2) > 30).mean()
        assert ink > 0.05, f"{row['id']} ({row['alt_text']}) looks blank"


def test_emoji_catalogue_has_real_attribute_pairs() -> None:
    families = {f.name: f for f in emoji_world.catalogue(str(_font_or_skip()))}
    texts = {f.name: {m.text for m in f.members} for f in families.values()}
    assert {"\U0001f468\u200d\u2695", "\U0001f469\u200d\u2695"} <= texts["health worker"]
    assert {"\U0001f436", "\U0001f415"} <= texts["dog"]  # dog face / dog
    assert {"\U0001f499", "\U0001f49a", "\U0001f49b"} <= texts["heart"]
    woman = next(m for m in families["adult"].members if m.text == "\U0001f469\U0001f3fd")
    assert woman.alt_text == "woman: medium skin tone"
    assert woman.attributes["gender"] == "female" and woman.attributes["skin_tone"] == "medium"


def test_emoji_sides_and_targets(emoji_root: Path) -> None:
    images = _images(emoji_root)
    families = {
        s: {r["attributes"]["family"] for r in images.values() if r["split"] == s}
        for s in ("train", "test")
    }
    assert not families["train"] & families["test"]  # no artwork shared across sides
    queries = _jsonl(emoji_root / "queries.test.jsonl")
    assert len({q["kind"] for q in queries}) >= 3
    for q in queries:
        ref = images[q["reference"]]["attributes"]
        kind, edit = q["kind"], q["edit"]
        assert ref[kind] == edit["old"] != edit["new"]
        wanted = {**ref, kind: edit["new"]}
        same = {i for i, r in images.items() if r["split"] == "test" and r["attributes"] == wanted}
        assert set(q["targets"]) == same - {q["reference"]} and q["targets"]
        assert all(images[d]["attributes"] != wanted for d in q["distractors"])


def test_emoji_missing_font_names_the_package(tmp_path: Path) -> None:
    with pytest.raises(emoji_world.FontNotFoundError, match="fonts-noto-color-emoji"):
        generate_emoji_world(tmp_path / "w", font_path=tmp_path / "nope.ttf", progress=False)


# ---------------------------------------------------------------------------- adapter


@pytest.mark.parametrize("which", ["shapes", "emoji"])
def test_adapter_round_trip(which: str, shapes_root: Path, request: pytest.FixtureRequest) -> None:
    root = shapes_root if which == "shapes" else request.getfixturevalue("emoji_root")
    name = "shapescir" if which == "shapes" else "emojicir"
    images = _images(root)
    split = load_world_split(root, "test", name)
    assert isinstance(split, BenchmarkSplit) and split.benchmark == name
    assert set(split.gallery) == {i for i, r in images.items() if r["split"] == "test"}
    assert split.exclude_reference and split.metrics == ("recall", "map")
    assert split.ks == (1, 5, 10, 50) and split.protocol["exclude_reference"] is True
    assert split.protocol["world"]["seed"] == read_world_info(root).seed
    gallery = set(split.gallery)
    for q in split.queries:
        assert q.reference in gallery and set(q.targets) <= gallery and q.targets
        assert split.group(q) == q.meta["kind"]
    assert split.load_image(split.queries[0].reference).mode == "RGB"
    assert all(Path(f).is_file() for f in split.fingerprint_files)
    val = load_world_split(root, "val")
    assert set(val.gallery) == {i for i, r in images.items() if r["split"] == "train"}


def test_adapter_errors_are_clear(shapes_root: Path, tmp_path: Path) -> None:
    with pytest.raises(MissingDatasetFileError, match="generate_shapes_world"):
        load_world_split(tmp_path / "absent", "test", "shapescir")
    broken = tmp_path / "broken"
    shutil.copytree(shapes_root, broken)
    (broken / "queries.test.jsonl").unlink()
    with pytest.raises(MissingDatasetFileError, match=r"queries\.test\.jsonl") as err:
        load_world_split(broken, "test")
    assert str(broken / "queries.test.jsonl") in str(err.value)
    with (broken / "images.jsonl").open("a") as f:
        f.write("{not json\n")
    with pytest.raises(MalformedDatasetFileError, match=r"images\.jsonl: line \d+"):
        load_world_split(broken, "val")
    (broken / "world.json").unlink()
    with pytest.raises(MissingDatasetFileError, match=r"world\.json"):
        load_world_split(broken, "test")
    with pytest.raises(ValueError, match="unannotated"):
        load_world_split(shapes_root, "train")
    with pytest.raises(ValueError, match="not emojicir"):
        load_world_split(shapes_root, "test", "emojicir")


def test_world_cli_writes_and_exports_training_queries(tmp_path: Path) -> None:
    root, out = tmp_path / "shapes", tmp_path / "gt"
    args = ["--n-train", "80", "--n-test", "60", "--queries", "4", "--val-queries", "3"]
    assert main(["world", "shapes", "--out", str(root), *args, "--train-queries", "6"]) == 0
    assert len(_jsonl(root / "queries.train.jsonl")) == 6
    assert (
        main(["world", "triplets", "--root", str(root), "--split", "train", "--out", str(out)]) == 0
    )
    assert {r["provenance"]["split"] for r in _jsonl(out / "triplets.jsonl")} == {"train"}


# ---------------------------------------------------------------------------- XKCD palette


def test_an_xkcd_palette_world_paints_and_names_the_survey_colours(tmp_path: Path) -> None:
    root = tmp_path / "xkcd"
    generate_shapes_world(
        root, n_train=40, n_test=0, n_queries=0, n_val_queries=0, palette="xkcd",
        min_objects=1, max_objects=2, progress=False,
    )  # fmt: skip
    survey = shapes.xkcd_colours()
    assert len(survey) == 949 and survey["crimson"] == (140, 0, 15)
    params = read_world_info(root).params
    assert params["palette"] == "xkcd" and len(params["colours"]) == 949
    rows = list(_images(root).values())
    named = [o["colour"] for row in rows for o in row["attributes"]["objects"]]
    assert set(named) <= set(survey) and not set(named) <= set(shapes.COLOURS)
    assert len(set(named)) > len(shapes.COLOURS)  # far more than the world's eight
    for row in rows:
        objects = row["attributes"]["objects"]
        for o in objects:
            assert f"{o['size']} {o['colour']} {o['shape']}" in row["alt_text"]
        if len(objects) == 1 and objects[0]["size"] == "large":  # the object's own pixels
            pixels = np.asarray(Image.open(root / row["file"])).reshape(-1, 3).astype(int)
            wanted = np.array(shapes.colour_rgb(objects[0]["colour"]))
            assert (np.abs(pixels - wanted).max(axis=1) <= 14).sum() > 50  # the shade jitter


def test_a_world_colour_keeps_its_rgb_and_the_default_palette_is_unrecorded(
    shapes_root: Path,
) -> None:
    assert shapes.colour_rgb("red") == shapes.COLOURS["red"]  # not the survey's (229, 0, 0)
    assert shapes.colour_rgb("crimson") == (140, 0, 15)
    assert "palette" not in read_world_info(shapes_root).params  # older worlds stay the same


def test_an_xkcd_palette_world_refuses_queries() -> None:
    with pytest.raises(ValueError, match="query counts to 0"):
        shapes.ShapesConfig(palette="xkcd", n_queries=0, n_val_queries=4)
    with pytest.raises(ValueError, match="palette must be one of"):
        shapes.ShapesConfig(palette="css")


def test_world_cli_makes_an_xkcd_palette_world_and_names_what_it_refuses(tmp_path, caplog) -> None:
    root = tmp_path / "colours"
    sizes = ["--n-train", "12", "--n-test", "0", "--val-queries", "0"]
    assert main(["world", "shapes", "--out", str(root), *sizes, "--palette", "xkcd"]) != 0
    assert "--queries 0 --val-queries 0" in caplog.text  # --queries defaults to 300
    assert not (root / "world.json").exists()
    assert main(["world", "shapes", "--out", str(root), *sizes, "--queries", "0",
                 "--palette", "xkcd"]) == 0  # fmt: skip
    assert read_world_info(root).params["palette"] == "xkcd"
    assert len(_images(root)) == 12
