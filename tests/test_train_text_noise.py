"""Word dropout and synonym swaps of the triplets' modification texts."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch
from PIL import Image

from opencir.train import DataConfig
from opencir.train.config import TrainConfig
from opencir.train.data import Collate, TripletDataset, TripletExample
from opencir.train.text_noise import (
    drop_words,
    load_synonyms,
    noise_batch_texts,
    swap_synonyms,
)

TEXTS = [f"change the red circle at the top left to blue number {i}" for i in range(200)]


def test_no_dropout_leaves_every_text_whole() -> None:
    assert noise_batch_texts(TEXTS, 0, word_dropout=0.0) == TEXTS


def test_words_are_dropped_at_the_asked_rate_and_kept_in_order() -> None:
    out = noise_batch_texts(TEXTS, 0, word_dropout=0.25)
    kept = sum(len(o.split()) for o in out) / sum(len(t.split()) for t in TEXTS)
    assert 0.70 < kept < 0.80  # 2,400 words, each kept with probability 0.75
    for original, cut in zip(TEXTS, out, strict=True):
        words = iter(original.split())
        assert all(word in words for word in cut.split())  # a subsequence of the original


def test_at_least_one_word_stays() -> None:
    rng = random.Random(0)
    assert all(len(drop_words("remove it", 0.99, rng).split()) == 1 for _ in range(100))
    assert drop_words("", 0.5, rng) == ""


def test_the_draw_is_a_function_of_the_batch_and_the_seed() -> None:
    batch = TEXTS[:32]
    assert noise_batch_texts(batch, 1, word_dropout=0.3) == noise_batch_texts(
        batch, 1, word_dropout=0.3
    )
    assert noise_batch_texts(batch, 1, word_dropout=0.3) != noise_batch_texts(
        batch, 2, word_dropout=0.3
    )
    # the same text in another batch is cut afresh
    other = [TEXTS[0], *TEXTS[100:131]]
    draws = {
        noise_batch_texts(other[:k] + batch[:1], 1, word_dropout=0.3)[-1] for k in range(1, 30)
    }
    assert len(draws) > 1


def test_collate_cuts_triplet_texts_only() -> None:
    dataset = TripletDataset(
        [TripletExample("a", text, "b") for text in TEXTS[:16]],
        lambda key: Image.new("RGB", (4, 4)),
    )
    seen: list[list[str]] = []

    def tokenizer(texts):
        seen.append(list(texts))
        return {}

    collate = Collate(lambda images: torch.zeros(len(images), 3), tokenizer, word_dropout=0.5)
    collate([dataset[i] for i in range(16)])
    assert seen[-1] != TEXTS[:16] and len(seen[-1]) == 16
    Collate(lambda images: torch.zeros(len(images), 3), tokenizer, word_dropout=0.5)(
        [{"image": Image.new("RGB", (4, 4)), "text": text} for text in TEXTS[:16]]
    )
    assert seen[-1] == TEXTS[:16]  # image–caption pairs keep their captions
    swapping = Collate(lambda images: torch.zeros(len(images), 3), tokenizer,
                       synonyms=SYNONYMS, synonym_rate=1.0)  # fmt: skip
    swapping([dataset[i] for i in range(16)])
    assert all(not t.startswith("change the red ") and " periwinkle " in t for t in seen[-1])


def test_word_dropout_is_checked(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"data\.word_dropout must be in"):
        DataConfig(word_dropout=1.0)
    with pytest.raises(ValueError, match="applies to the triplet texts"):
        TrainConfig(stage="pretrain", model="x", out_dir=str(tmp_path),
                    data=DataConfig(word_dropout=0.1))  # fmt: skip
    TrainConfig(stage="cir", model="x", out_dir=str(tmp_path), data=DataConfig(word_dropout=0.1))


SYNONYMS = {"red": ["carmine", "fire engine red"], "blue": ["periwinkle"]}


def test_synonyms_replace_whole_words_at_the_asked_rate() -> None:
    rng = random.Random(0)
    text = "change the red circle at the centred top to blue, not the cherry-red one"
    assert swap_synonyms(text, SYNONYMS, 0.0, rng) == text
    always = swap_synonyms(text, SYNONYMS, 1.0, rng)
    assert (
        always.startswith("change the ") and " circle at the centred top to periwinkle, " in always
    )
    assert always.split()[2] in ("carmine", "fire") and "cherry-red" in always  # whole words only
    assert swap_synonyms("Red star", SYNONYMS, 1.0, rng).split()[0] in ("carmine", "fire")
    swapped = [
        swap_synonyms("the red star", SYNONYMS, 0.3, rng) != "the red star" for _ in range(2000)
    ]
    assert 0.26 < sum(swapped) / len(swapped) < 0.34


def test_swaps_and_dropout_are_a_function_of_the_batch_and_the_seed() -> None:
    batch = TEXTS[:32]
    swapped = noise_batch_texts(batch, 1, synonyms=SYNONYMS, synonym_rate=0.5)
    assert swapped == noise_batch_texts(batch, 1, synonyms=SYNONYMS, synonym_rate=0.5)
    assert swapped != noise_batch_texts(batch, 2, synonyms=SYNONYMS, synonym_rate=0.5)
    assert sum(t != o for t, o in zip(swapped, batch, strict=True)) > 16
    # without a table the draw is word dropout's alone, as before swaps existed
    assert noise_batch_texts(batch, 1, word_dropout=0.3, synonyms={}, synonym_rate=0.5) == (
        noise_batch_texts(batch, 1, word_dropout=0.3)
    )


def test_a_synonym_table_is_read_and_checked(tmp_path: Path) -> None:
    good = tmp_path / "good.json"
    good.write_text(json.dumps({"Red": ["carmine"]}))
    assert load_synonyms(good) == {"red": ("carmine",)}
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"red": []}))
    with pytest.raises(ValueError, match="non-empty list of strings"):
        load_synonyms(bad)
    with pytest.raises(ValueError, match="cannot read"):
        DataConfig(synonyms=str(tmp_path / "missing.json"))
    with pytest.raises(ValueError, match=r"data\.synonym_rate must be in"):
        DataConfig(synonym_rate=1.5)
    with pytest.raises(ValueError, match=r"data\.synonyms applies to the triplet texts"):
        TrainConfig(stage="pretrain", model="x", out_dir=str(tmp_path),
                    data=DataConfig(synonyms=str(good)))  # fmt: skip
