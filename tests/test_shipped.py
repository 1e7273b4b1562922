"""The checkpoints shipped in the package load and beat the image-only baseline."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
import torch

import opencir
from opencir.data.worlds import generate_shapes_world
from opencir.demo import shipped_checkpoint
from opencir.eval.benchmarks import load_benchmark
from opencir.eval.evaluate import evaluate
from opencir.eval.stats import paired_test


class ImageOnly:
    """The image-only baseline on the shipped pretrained backbone: the reference alone."""

    def __init__(self, backbone: opencir.CIRModel) -> None:
        self.backbone = backbone

    def encode_query(self, images, texts: Sequence[str]) -> torch.Tensor:
        return self.backbone.encode_target(images)

    def encode_target(self, images) -> torch.Tensor:
        return self.backbone.encode_target(images)


@pytest.fixture(scope="module")
def shapes_test(tmp_path_factory):
    root = tmp_path_factory.mktemp("shipped") / "shapes"
    # a fresh test side the checkpoints never saw (another seed than the recipe's world)
    generate_shapes_world(root, n_train=0, n_test=2000, n_queries=300, n_val_queries=0,
                          seed=7, progress=False)  # fmt: skip
    return load_benchmark("shapescir", root, "test")


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("gallery-cache")


def test_shipped_checkpoints_load(shapes_test) -> None:
    for name in ("shapes-s1-gt", "shapes-s1-zero-shot", "shapes-backbone"):
        path = shipped_checkpoint(name)
        assert path is not None, f"shipped checkpoint {name} is missing from the package"
        assert opencir.load(path).config.backbone.family == "dual"


def test_shipped_s1_beats_image_only_on_shapescir(shapes_test, cache) -> None:
    s1 = opencir.load(shipped_checkpoint("shapes-s1-gt"))
    baseline = ImageOnly(opencir.load(shipped_checkpoint("shapes-backbone")))
    ours = evaluate(s1, shapes_test, batch_size=64, cache_dir=cache, progress=False)
    theirs = evaluate(baseline, shapes_test, batch_size=64, progress=False)
    # docs/RESULTS.md: on five fresh worlds of this one's size (1,980 queries) the shipped S1
    # scores 37.22 R@1 against image-only's 16.11 (2.31 times, +21.11, p<0.001); on this
    # world's 300 (measured: 33.00 vs 18.33, 1.80 times; ±5 points each) the paired 95% CI of
    # each gain must exclude 0 and R@1 be well above image-only's (1.5 times: a 300-query
    # ratio is too noisy for the five worlds' 2 times — the checkpoints shipped before scored
    # 2.15 times here and 2.21 times on the five)
    for metric in ("R@1", "R@10", "R@50"):
        gain = paired_test(ours.per_query[metric], theirs.per_query[metric])
        assert gain.low > 0, (metric, gain, ours.metrics, theirs.metrics)
    assert ours.metrics["R@1"] >= 1.5 * theirs.metrics["R@1"], (ours.metrics, theirs.metrics)


def test_shipped_zero_shot_s1_beats_image_only_below_the_supervised(shapes_test, cache) -> None:
    zero_shot = opencir.load(shipped_checkpoint("shapes-s1-zero-shot"))
    supervised = opencir.load(shipped_checkpoint("shapes-s1-gt"))
    baseline = ImageOnly(opencir.load(shipped_checkpoint("shapes-backbone")))
    ours = evaluate(zero_shot, shapes_test, batch_size=64, cache_dir=cache, progress=False)
    theirs = evaluate(baseline, shapes_test, batch_size=64, progress=False)
    ceiling = evaluate(supervised, shapes_test, batch_size=64, cache_dir=cache, progress=False)
    # docs/RESULTS.md: trained on template-writer triplets of related pairs only, on five
    # fresh worlds (1,980 queries) it is above image-only at R@1 (22.93 vs 16.11, +6.82,
    # p<0.001) and R@50; on this world's 300 (measured: R@1 25.33 vs 18.33) the paired CIs
    # must exclude 0, and the supervised S1 must stay above it at R@10 (measured 83.33 vs 69.00)
    for metric in ("R@1", "R@50"):
        gain = paired_test(ours.per_query[metric], theirs.per_query[metric])
        assert gain.low > 0, (metric, gain, ours.metrics, theirs.metrics)
    gap = paired_test(ceiling.per_query["R@10"], ours.per_query["R@10"])
    assert gap.low > 0, (gap, ceiling.metrics, ours.metrics)


class ShuffledTexts:
    """A deliberately wrong model: the shipped S1 given another query's modification text."""

    def __init__(self, model: opencir.CIRModel) -> None:
        self.model = model

    def encode_query(self, images, texts: Sequence[str]) -> torch.Tensor:
        return self.model.encode_query(images, list(texts[1:]) + list(texts[:1]))

    def fingerprint(self) -> str:  # same targets as the model: its gallery cache is valid
        return self.model.fingerprint()

    def encode_target(self, images) -> torch.Tensor:
        return self.model.encode_target(images)


def test_a_deliberately_wrong_model_scores_worse(shapes_test, cache) -> None:
    s1 = opencir.load(shipped_checkpoint("shapes-s1-gt"))
    right = evaluate(s1, shapes_test, batch_size=64, cache_dir=cache, progress=False)
    wrong = evaluate(ShuffledTexts(s1), shapes_test, batch_size=64, cache_dir=cache,
                     progress=False)  # fmt: skip
    assert wrong.gallery_cache_hit
    right, wrong = right.metrics, wrong.metrics
    assert wrong["R@10"] < right["R@10"] and wrong["mAP@10"] < right["mAP@10"], (right, wrong)
