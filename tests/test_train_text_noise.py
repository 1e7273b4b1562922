"""Word dropout of the triplets' modification texts."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch
from PIL import Image

from opencir.train import DataConfig
from opencir.train.config import TrainConfig
from opencir.train.data import Collate, TripletDataset, TripletExample
from opencir.train.text_noise import drop_batch_words, drop_words

TEXTS = [f"change the red circle at the top left to blue number {i}" for i in range(200)]


def test_no_dropout_leaves_every_text_whole() -> None:
    assert drop_batch_words(TEXTS, 0.0, seed=0) == TEXTS


def test_words_are_dropped_at_the_asked_rate_and_kept_in_order() -> None:
    out = drop_batch_words(TEXTS, 0.25, seed=0)
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
    assert drop_batch_words(batch, 0.3, seed=1) == drop_batch_words(batch, 0.3, seed=1)
    assert drop_batch_words(batch, 0.3, seed=1) != drop_batch_words(batch, 0.3, seed=2)
    # the same text in another batch is cut afresh
    other = [TEXTS[0], *TEXTS[100:131]]
    draws = {drop_batch_words(other[:k] + batch[:1], 0.3, seed=1)[-1] for k in range(1, 30)}
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


def test_word_dropout_is_checked(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"data\.word_dropout must be in"):
        DataConfig(word_dropout=1.0)
    with pytest.raises(ValueError, match="applies to the triplet texts"):
        TrainConfig(stage="pretrain", model="x", out_dir=str(tmp_path),
                    data=DataConfig(word_dropout=0.1))  # fmt: skip
    TrainConfig(stage="cir", model="x", out_dir=str(tmp_path), data=DataConfig(word_dropout=0.1))
