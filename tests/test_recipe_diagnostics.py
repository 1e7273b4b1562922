"""The miniature recipe's backbone diagnostics (recipes/miniature/*.py) on a tiny world."""

from __future__ import annotations

import importlib.util
import json
import re
from dataclasses import replace
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import torch

from opencir.eval.benchmarks import load_benchmark

RECIPES = Path(__file__).resolve().parents[1] / "recipes" / "miniature"


def _script(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, RECIPES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _alt_texts(world: Path) -> dict[str, str]:
    rows = (json.loads(line) for line in (world / "images.jsonl").open(encoding="utf-8"))
    return {row["id"]: row["alt_text"] for row in rows}


def test_the_caption_oracle_asks_each_query_with_its_target_description(world: Path) -> None:
    split = load_benchmark("shapescir", str(world), "val")
    script = _script("caption_oracle")
    oracle = script.oracle_split(split, script.world_images(world))
    alt = _alt_texts(world)
    assert len(oracle.queries) == len(split.queries) > 0
    for asked, original in zip(oracle.queries, split.queries, strict=True):
        assert asked.text == alt[original.targets[0]] != original.text
        assert (asked.reference, asked.targets) == (original.reference, original.targets)
    assert oracle.gallery == split.gallery and oracle.exclude_reference == split.exclude_reference


def test_scene_recall_counts_a_hit_when_the_nearest_image_shows_the_same_scene(
    world: Path,
) -> None:
    rows = [json.loads(line) for line in (world / "images.jsonl").open(encoding="utf-8")]
    train = [r for r in rows if r["split"] == "train"]
    scenes = [json.dumps(r["attributes"], sort_keys=True) for r in train]
    code = {scene: i for i, scene in enumerate(dict.fromkeys(scenes))}

    class SceneModel:  # embeds the images, in gallery order, by their scene: a perfect encoder
        def __init__(self, rows: list[torch.Tensor]) -> None:
            self.queue = rows

        def encode_target(self, images):
            return torch.stack([self.queue.pop(0) for _ in images])

    one_hot = [torch.nn.functional.one_hot(torch.tensor(code[s]), len(code)) for s in scenes]
    repeated = sum(scenes.count(s) for s in set(scenes) if scenes.count(s) > 1)
    assert repeated > 0
    scene_hits = _script("scene_recall").scene_hits
    hits = scene_hits(world, SceneModel([row.float() for row in one_hot]), limit=len(train))
    assert len(hits) == repeated and all(hit == 1.0 for hit in hits)
    # an encoder blind to the scene (every image alike) finds the first other image instead
    blind = scene_hits(world, SceneModel([torch.ones(3) for _ in scenes]), limit=len(train))
    assert len(blind) == repeated and sum(blind) < repeated


def test_colour_wording_split_groups_queries_by_their_colour_word(tmp_path: Path) -> None:
    from opencir.data.worlds import generate_shapes_world

    world = tmp_path / "shapes"
    generate_shapes_world(world, n_train=0, n_test=240, n_queries=40, n_val_queries=0,
                          image_size=32, seed=3, progress=False)  # fmt: skip
    script = _script("colour_words")
    queries = [json.loads(line) for line in (world / "queries.test.jsonl").open()]
    wording = [script.colour_wording(q) for q in queries]
    assert set(wording) == {"canonical", "other word", "not named"}
    for query, said in zip(queries, wording, strict=True):
        words = re.findall(r"[a-z]+", query["text"].lower())
        assert (said == "canonical") == (query["edit"]["object"]["colour"] in words)
    edit = {"object": {"colour": "red"}}
    said = {text: script.colour_wording({"text": text, "edit": edit}) for text in (
        "the disc down at the bottom, centred", "make the cherry-red disc tiny",
        "lose the crimson disc", "what if the ruby disc wasn't there", "erase the cardinal disc",
        "make the navy disc tiny")}  # fmt: skip
    assert list(said.values()) == [
        "not named",
        "canonical",
        "other word",
        "other word",
        "other word",
        "not named",
    ]  # a register's word for another colour does not name this one
    # a model that finds exactly the canonically worded queries, measured on two worlds
    results = tmp_path / "model.json"
    hits = [float(w == "canonical") for w in wording]
    results.write_text(json.dumps({"metrics": {"R@1": 100 * sum(hits) / len(hits)},
                                   "per_query": {"R@1": hits},
                                   "query_ids": [q["id"] for q in queries]}))  # fmt: skip
    table = script.split_table([world, world], "test", [("m", [results, results])], "R@1")
    rows = {line.split(" | ")[0].lstrip("| "): line for line in table.splitlines()[2:]}
    n = {w: 2 * wording.count(w) for w in set(wording)}
    assert rows["canonical"].startswith(f"| canonical | {n['canonical']} | 100.0 [100.0, 100.0]")
    assert rows["other word"].startswith(f"| other word | {n['other word']} | 0.0 [0.0, 0.0]")
    assert rows["not named"].startswith(f"| not named | {n['not named']} | 0.0 [0.0, 0.0]")
    assert {key.split(", ")[0] for key in rows if "," in key} == {q["kind"] for q in queries}


def test_the_colour_probe_separates_separable_features() -> None:
    script = _script("colour_words")
    torch.manual_seed(0)
    centres = torch.randn(len(script.COLOURS), 16) * 4
    y = torch.arange(len(script.COLOURS)).repeat_interleave(5)
    x = centres[y] + torch.randn(len(y), 16) * 0.1
    probe = script.fit_probe(x, y)
    assert (probe(x).argmax(1) == y).all()


def test_the_probe_scores_each_unseen_word_with_a_confidence_interval() -> None:
    """Features that carry the colour of half the scored words: accuracy 0.5 with a CI."""
    script = _script("colour_words")
    tables = (script.TRAIN_SYNONYMS, script.VAL_SYNONYMS, script.SYNONYMS)
    colour_of = {word: c for table in tables for c in script.COLOURS for word in table[c]}
    colour_of.update({colour: colour for colour in script.COLOURS})
    scored = sorted(w for table in tables[1:] for c in script.COLOURS for w in table[c])
    blind = set(scored[::2])  # every other scored word carries no colour in its features
    centres = torch.randn(len(script.COLOURS), 16, generator=torch.Generator().manual_seed(0)) * 4

    def features(word: str) -> torch.Tensor:
        rows = len(script.CONTEXTS)
        if word in blind:
            return torch.zeros(rows, 16)
        return centres[script.COLOURS.index(colour_of[word])].expand(rows, 16)

    for val, test in (script.probe_accuracy(features, 0), script.probe_accuracy(features, 2)):
        for accuracies, table in ((val, script.VAL_SYNONYMS), (test, script.SYNONYMS)):
            words = [w for c in script.COLOURS for w in table[c]]
            seen = sum(w not in blind for w in words)
            assert accuracies.shape[1] == len(words)
            # the blind words' shared zero vector lands on one colour: right for at most
            # that colour's three words
            assert seen / len(words) <= accuracies.mean() <= (seen + 3) / len(words)
            mean, low, high = map(float, re.findall(r"\d\.\d+", script._fraction(accuracies)))
            assert low < mean < high and mean == round(accuracies.mean(), 2)
    val, _ = script.probe_accuracy(features, 2)
    assert val.shape[0] == 3  # three picks of the register words
    assert script._difference(val, val).startswith("+0.00 [+0.00, +0.00] p=1.000")
    val_words = [w for c in script.COLOURS for w in script.VAL_SYNONYMS[c]]
    sighted = val.copy()
    sighted[:, [i for i, w in enumerate(val_words) if w in blind]] = 1.0  # every word right
    assert script._difference(sighted, val).endswith("p<0.001")


def test_the_survey_synonym_table_holds_no_val_or_test_colour_word() -> None:
    script = _script("colour_words")
    assert np.allclose(script.cielab(np.array([255, 255, 255])), [100, 0, 0], atol=0.05)
    assert np.allclose(script.cielab(np.array([255, 0, 0])), [53.24, 80.09, 67.20], atol=0.05)
    table = script.survey_synonyms()
    assert list(table) == list(script.WORLD_COLOURS) and all(len(v) >= 10 for v in table.values())
    held_out = {w for t in (script.SYNONYMS, script.VAL_SYNONYMS) for c in script.COLOURS
                for n in t[c] for w in re.split(r"[ -]", n)} - set(script.COLOURS)  # fmt: skip
    for colour, names in table.items():
        for name in names:
            assert not set(re.split(r"[ /-]", name)) & held_out, name
            assert not any(other in name for other in script.WORLD_COLOURS if other != colour)
    assert "carmine" in table["red"] and "periwinkle" in table["blue"]
    assert "liliac" not in table["purple"]  # one letter from the test register's "lilac"
    tight = script.survey_synonyms(max_distance=10.0)
    assert all(set(tight[c]) <= set(table[c]) for c in table) and sum(map(len, tight.values())) < 40


def test_the_ensemble_scores_the_mean_of_its_members_cosine_similarities() -> None:
    ensemble_type = _script("ensemble").SimilarityEnsemble
    generator = torch.Generator().manual_seed(0)

    class Fixed:  # a member with fixed, unnormalised query and target embeddings
        def __init__(self) -> None:
            self.queries = torch.randn(3, 5, generator=generator)
            self.targets = torch.randn(4, 5, generator=generator)

        def encode_query(self, images, texts):
            return self.queries

        def encode_target(self, images):
            return self.targets

    members = [Fixed(), Fixed(), Fixed()]
    ensemble = ensemble_type(members)
    queries, targets = ensemble.encode_query([], ["a"] * 3), ensemble.encode_target([])
    cosine = torch.nn.functional.cosine_similarity
    expected = torch.stack(
        [cosine(m.queries[:, None], m.targets[None], dim=-1) for m in members]
    ).mean(0)
    assert torch.allclose(queries @ targets.T, expected, atol=1e-6)
    assert torch.allclose(targets.norm(dim=-1), torch.ones(4), atol=1e-6)
    assert ensemble.fingerprint() != ensemble_type(members[:2]).fingerprint()
    with pytest.raises(ValueError, match="at least two"):
        ensemble_type(members[:1])


def test_the_oracle_misses_are_told_apart_by_how_the_scene_differs() -> None:
    difference = _script("caption_oracle").scene_difference

    def obj(position: str, shape: str = "circle", colour: str = "red", size: str = "small"):
        return {"position": position, "shape": shape, "colour": colour, "size": size}

    target = [obj("top"), obj("center", "star", "blue", "large")]
    assert difference(target, [obj("top"), obj("center", "star", "blue", "large")]) == "none"
    assert difference(target, [obj("top"), obj("center", "square", "blue", "large")]) == "shape"
    recoloured = [obj("top", colour="green"), obj("center", "hexagon", "blue", "small")]
    assert difference(target, recoloured) == "colour + shape + size"
    assert difference(target, [obj("top"), obj("left", "star", "blue", "large")]) == (
        "places or number"
    )
    assert difference(target, [obj("top")]) == "places or number"


def test_the_oracle_counts_each_missed_query_once(world: Path) -> None:
    oracle = _script("caption_oracle")
    split = load_benchmark("shapescir", str(world), "val")
    queries = split.queries[:4]
    # the first two queries rank a target first, the other two their reference
    rankings = {q.id: [q.targets[0]] for q in queries[:2]}
    rankings |= {q.id: [q.reference] for q in queries[2:]}
    kinds = oracle.miss_kinds(replace(split, queries=queries), rankings, oracle.world_images(world))
    assert sum(kinds.values()) == 2 and "none" not in kinds
