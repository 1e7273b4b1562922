"""Change-text validation and the template writer's grammar."""

from __future__ import annotations

import asyncio

import pytest

from opencir.generate import templates
from opencir.generate.jobs import ImageJob, PairJob
from opencir.generate.prompts import REFORMULATION_PROMPT, fill
from opencir.generate.sampling import Pair
from opencir.generate.validation import Rejection, ValidationConfig, clean_answer, validate_change
from opencir.generate.writers import TemplateWriter, WriterConfig


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (
            ' Difference: "Make the dress red and sleeveless."\nExtra line',
            "Make the dress red and sleeveless",
        ),
        ("answer: turn the cat into a dog!", "turn the cat into a dog"),
        ("  'add a hat'  ", "add a hat"),
    ],
)
def test_clean_answer(raw: str, expected: str) -> None:
    assert clean_answer(raw) == expected
    assert validate_change(raw) == expected


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        ("", "empty"),
        ("   \n  ", "empty"),
        ("Difference:", "empty"),
        ("make " * 13, "too_long"),
        ("make it **red**", "special_characters"),
        ("change color -> blue", "special_characters"),
        ("make it red 🎈", "special_characters"),
        ("swap #1 for #2", "special_characters"),
        ("Image A shows a dog while image B shows a cat", "describes_both"),
        ("Both images show a beach", "describes_both"),
        ("The first image has a red car", "describes_both"),
        ("The image features a woman in a dress", "describes_both"),
    ],
)
def test_rejections(raw: str, reason: str) -> None:
    result = validate_change(raw)
    assert isinstance(result, Rejection) and result.reason == reason


def test_word_limit_and_caption_copies() -> None:
    assert validate_change("a b c d", ValidationConfig(max_words=4)) == "a b c d"
    assert validate_change("a b c d e", ValidationConfig(max_words=4)).reason == "too_long"
    copied = validate_change("A red car, parked.", captions=("a red car parked",))
    assert copied.reason == "copies_caption"
    with pytest.raises(ValueError):
        ValidationConfig(max_words=0)


def test_seed_prompt_is_quoted_and_filled() -> None:
    assert REFORMULATION_PROMPT.startswith(
        "You have two captions for two images, image A and image B"
    )
    assert REFORMULATION_PROMPT.endswith("do not use special characters. Difference:")
    filled = fill(REFORMULATION_PROMPT, caption_a="a dog", caption_b="a cat")
    assert (
        "caption A: a dog caption B: a cat answer should be concise and within 12 words" in filled
    )
    with pytest.raises(ValueError, match="uses field 'nope'"):
        fill("{nope}", caption_a="x")


SCENE_A = {
    "objects": [
        {"shape": "circle", "colour": "red", "size": "large", "position": "top left"},
        {"shape": "square", "colour": "blue", "size": "small", "position": "center"},
    ]
}


def _scene(**changes: str) -> dict:
    first = {**SCENE_A["objects"][0], **changes}
    return {"objects": [first, SCENE_A["objects"][1]]}


@pytest.mark.parametrize(
    ("new", "phrasings"),
    [
        (_scene(colour="blue"), {"change the red circle to blue", "make the red circle blue"}),
        (
            _scene(shape="star"),
            {"replace the red circle with a star", "turn the red circle into a star"},
        ),
        (_scene(position="bottom"), {"move the red circle to the bottom"}),
        ({"objects": [SCENE_A["objects"][1]]}, {"remove the red circle"}),
    ],
)
def test_object_templates(new: dict, phrasings: set[str]) -> None:
    for variant in range(4):
        clauses = templates.attribute_changes(SCENE_A, new, variant)
        assert clauses and clauses[0] in phrasings


def test_added_object_and_flat_attributes() -> None:
    extra = {"shape": "star", "colour": "green", "size": "small", "position": "bottom"}
    grown = {"objects": [*SCENE_A["objects"], extra]}
    assert templates.attribute_changes(SCENE_A, grown, 0) == [
        "add a small green star at the bottom"
    ]
    cat = {"group": "animal", "family": "cat", "form": "face"}
    assert templates.flat_changes(cat, {**cat, "family": "dog"}, 0) == [
        "replace the cat with a dog"
    ]
    heart = {"group": "colour", "family": "heart", "colour": "red"}
    assert templates.flat_changes(heart, {**heart, "colour": "blue"}, 0) == ["make the heart blue"]
    hand = {"family": "waving hand", "skin_tone": "light"}
    assert templates.flat_changes(hand, {**hand, "skin_tone": "dark"}, 0) == [
        "change the skin tone from light to dark"
    ]


def test_caption_diff_templates() -> None:
    a, b = "a large red circle at the top left", "a large blue circle at the top left"
    assert templates.caption_changes(a, b, 0) == ["change the red circle to blue"]
    assert templates.caption_changes("a dog on a sofa", "a dog on a sofa with a ball", 0) == [
        "add ball"
    ]
    assert templates.caption_changes("a dog", "a dog", 0) == []
    long = ["replace one two three with four five six", "add seven eight nine ten"]
    assert templates.join_clauses(long, 12) == long[0]
    assert len(templates.join_clauses(["w " * 20], 12).split()) == 12


def _job(meta_a: dict, meta_b: dict, cap_a: str | None = None, cap_b: str | None = None) -> PairJob:
    return PairJob(
        Pair("a", "b", "random"), ImageJob("a", meta_a), ImageJob("b", meta_b), cap_a, cap_b
    )


def test_template_writer_outcomes() -> None:
    writer = TemplateWriter(WriterConfig(kind="template"))
    jobs = [
        _job({"attributes": SCENE_A}, {"attributes": _scene(colour="green")}),
        _job({}, {}, "a red ball", "a blue ball"),
        _job({"attributes": SCENE_A}, {"attributes": SCENE_A}),
        _job({}, {}, None, "x"),
    ]
    out = asyncio.run(writer.write_many(jobs))
    assert out[0].status == "ok" and "green" in out[0].text
    assert out[1].status == "ok" and out[1].text in (
        "change the red ball to blue",
        "make the red ball blue",
    )
    assert (out[2].status, out[2].reason) == ("rejected", "no_difference")
    assert (out[3].status, out[3].reason) == ("failed", "no_caption")
