"""The evaluator on a tiny synthetic benchmark with fake, deterministic models.

Each gallery image's pixels encode its number; a model maps that number to a fixed random
unit vector. The "good" model reads the wanted target number from the text, the image-only
baseline ignores the text, so the good model must score higher.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re

import numpy as np
import pytest
import torch
from PIL import Image

from opencir.eval.benchmark import BenchmarkSplit, CIRQuery
from opencir.eval.evaluate import (
    EvalResult,
    dataset_fingerprint,
    embed_queries,
    evaluate,
    gallery_cache_path,
)
from opencir.eval.metrics import map_at_k, rank_gallery, recall_at_k

N_GALLERY, DIM = 24, 16
TABLE = torch.nn.functional.normalize(
    torch.randn(64, DIM, generator=torch.Generator().manual_seed(0)), dim=1
)


def image_for(n: int) -> Image.Image:
    return Image.new("RGB", (8, 8), (n, 255 - n, (37 * n) % 256))


def number_of(image: Image.Image) -> int:
    return image.getpixel((0, 0))[0]


def text_noise(text: str, scale: float) -> torch.Tensor:
    seed = int(hashlib.sha256(text.encode()).hexdigest()[:8], 16)
    return scale * torch.randn(DIM, generator=torch.Generator().manual_seed(seed))


class GoodModel:
    """Reads '#<n>' from the text; a little reference and text noise keep it imperfect."""

    def __init__(self, noise: float = 0.45):
        self.noise, self.target_calls, self.target_images, self.query_calls = noise, 0, 0, 0

    def fingerprint(self) -> str:
        return f"{type(self).__name__}-{self.noise}"

    def encode_target(self, images):
        self.target_calls += 1
        self.target_images += len(images)
        return TABLE[[number_of(im) for im in images]]

    def encode_query(self, images, texts):
        self.query_calls += 1
        rows = []
        for im, text in zip(images, texts, strict=True):
            wanted = TABLE[int(re.search(r"#(\d+)", text).group(1))]
            rows.append(wanted + 0.3 * TABLE[number_of(im)] + text_noise(text, self.noise))
        return torch.nn.functional.normalize(torch.stack(rows), dim=1)


class ImageOnlyModel(GoodModel):
    """The image-only baseline: the query is the reference image."""

    def encode_query(self, images, texts):
        return TABLE[[number_of(im) for im in images]]


def make_split(
    *,
    exclude_reference: bool = True,
    metrics: tuple[str, ...] = ("recall", "map"),
    hidden: bool = False,
    subsets: bool = False,
    per_query_gallery: bool = False,
    fingerprint_files: tuple[str, ...] = (),
) -> BenchmarkSplit:
    keys = [f"img{n:02d}" for n in range(N_GALLERY)]
    queries = []
    for i in range(30):
        ref, target = i % N_GALLERY, (7 * i + 3) % N_GALLERY
        extra = (target + 1) % N_GALLERY
        targets = () if hidden else ((keys[target], keys[extra]) if i % 3 == 0 else (keys[target],))
        queries.append(
            CIRQuery(
                id=f"q{i}",
                reference=keys[ref],
                text=f"make it like #{target} please ({i})",
                targets=targets,
                subset=_subset(keys, ref, target, i) if subsets else None,
                gallery=_subset(keys, ref, target, i)[1:] if per_query_gallery else None,
                meta={"category": ["dress", "shirt", "toptee"][i % 3]},
            )
        )
    return BenchmarkSplit(
        benchmark="tiny",
        split="val",
        gallery=keys,
        queries=queries,
        load_image=lambda key: image_for(int(key[3:])),
        protocol={"caption_join": " and "},
        ks=(1, 2, 5, 10),
        metrics=metrics,
        exclude_reference=exclude_reference,
        group=lambda q: q.meta["category"],
        fingerprint_files=fingerprint_files,
    )


def _subset(keys, ref, target, i):
    others = [n for n in range(N_GALLERY) if n not in (ref, target)]
    picks = np.random.default_rng(i).choice(others, size=4, replace=False).tolist()
    return tuple(keys[n] for n in [ref, target, *picks])


def core_embeddings(model, split):
    gallery = model.encode_target([split.load_image(k) for k in split.gallery])
    return embed_queries(model, split, progress=False), gallery


def gallery_rows(split, keys_per_query):
    index = {k: i for i, k in enumerate(split.gallery)}
    return [[index[k] for k in keys] for keys in keys_per_query]


# ----------------------------------------------------------------------------- tests


def test_metrics_equal_the_metric_core():
    split = make_split()
    result = evaluate(GoodModel(), split, batch_size=7, progress=False, keep_rankings=5)
    q, g = core_embeddings(GoodModel(), split)
    exclude = gallery_rows(split, [[qq.reference] for qq in split.queries])
    targets = gallery_rows(split, [qq.targets for qq in split.queries])
    ids, _ = rank_gallery(q, g, 10, exclude=exclude)
    want = {f"R@{k}": v for k, v in recall_at_k(ids, targets, split.ks).items()}
    want |= {f"mAP@{k}": v for k, v in map_at_k(ids, targets, split.ks).items()}
    assert result.metrics == pytest.approx(want)
    assert 0 < result.metrics["R@1"] < 100  # the fake model is good, not perfect
    for name, rows in {"dress": range(0, 30, 3), "toptee": range(2, 30, 3)}.items():
        rows = list(rows)
        group = recall_at_k(ids[rows], [targets[i] for i in rows], [5])[5]
        assert result.per_group[name]["R@5"] == pytest.approx(group)
    groups = result.per_group.values()
    assert result.group_mean["R@10"] == pytest.approx(np.mean([m["R@10"] for m in groups]))
    assert result.rankings["q4"] == [split.gallery[j] for j in ids[4, :5].tolist()]
    assert (result.num_queries, result.num_gallery) == (30, N_GALLERY)


def test_gallery_cache_hit_skips_encoding(tmp_path):
    marker = tmp_path / "annotations.json"
    marker.write_text("{}")
    split = make_split(fingerprint_files=(str(marker),))
    model = GoodModel()
    first = evaluate(model, split, batch_size=5, cache_dir=tmp_path / "cache", progress=False)
    assert (model.target_calls, model.target_images) == (5, N_GALLERY)
    assert not first.gallery_cache_hit
    assert gallery_cache_path(model, split, tmp_path / "cache").exists()
    assert [p.name for p in (tmp_path / "cache").iterdir() if p.suffix == ".tmp"] == []

    second = evaluate(model, split, batch_size=5, cache_dir=tmp_path / "cache", progress=False)
    assert model.target_calls == 5 and second.gallery_cache_hit
    assert second.metrics == first.metrics and second.rankings == first.rankings

    os.utime(marker, ns=(1, 1))  # the annotations changed: the dataset fingerprint moves
    evaluate(model, split, cache_dir=tmp_path / "cache", progress=False)
    assert model.target_calls == 6
    other = GoodModel(noise=0.1)  # another model: another cache entry
    assert not evaluate(
        other, split, cache_dir=tmp_path / "cache", progress=False
    ).gallery_cache_hit


def test_models_without_fingerprint_are_not_cached(tmp_path):
    class Anonymous:  # same class, other weights: a class-name key would mix them up
        encode_target = GoodModel.encode_target
        encode_query = GoodModel.encode_query
        noise, target_calls, target_images, query_calls = 0.45, 0, 0, 0

    evaluate(Anonymous(), make_split(), cache_dir=tmp_path, progress=False)
    assert list(tmp_path.iterdir()) == []


def test_corrupt_cache_is_recomputed(tmp_path):
    split, model = make_split(), GoodModel()
    path = gallery_cache_path(model, split, tmp_path)
    path.write_bytes(b"not a numpy file")
    result = evaluate(model, split, cache_dir=tmp_path, progress=False)
    assert not result.gallery_cache_hit and model.target_calls > 0
    assert np.load(path).shape == (N_GALLERY, DIM)


def test_splits_of_one_gallery_share_its_cache(tmp_path):
    """CIRCO val and test rank one 123k-image gallery: the second split is a cache hit."""
    images, val_file, test_file = (tmp_path / n for n in ("images.json", "val.json", "test.json"))
    for path in (images, val_file, test_file):
        path.write_text("{}")
    val = dataclasses.replace(
        make_split(fingerprint_files=(str(val_file), str(images))), gallery_files=(str(images),)
    )
    test = dataclasses.replace(
        make_split(hidden=True, fingerprint_files=(str(test_file), str(images))),
        split="test",
        gallery_files=(str(images),),
    )
    model, cache = GoodModel(), tmp_path / "cache"
    first = evaluate(model, val, cache_dir=cache, progress=False)
    second = evaluate(model, test, cache_dir=cache, progress=False)
    assert not first.gallery_cache_hit and second.gallery_cache_hit
    assert model.target_images == N_GALLERY  # the gallery was embedded once
    assert first.dataset_fingerprint != second.dataset_fingerprint  # results still differ
    os.utime(images, ns=(1, 1))  # the gallery's image list changed: embed it again
    assert not evaluate(model, test, cache_dir=cache, progress=False).gallery_cache_hit


def test_data_fingerprint_follows_the_annotation_content_not_its_path_or_mtime(tmp_path):
    """A world regenerated in another folder pairs with the first; edited queries do not."""
    copies = []
    for folder, mtime in (("here", 1), ("elsewhere", 2)):
        (tmp_path / folder).mkdir()
        path = tmp_path / folder / "queries.jsonl"
        path.write_text('{"id": "q0", "text": "make it red"}\n')
        os.utime(path, ns=(mtime, mtime))
        copies.append(make_split(fingerprint_files=(str(path),)))
    assert dataset_fingerprint(copies[0]) == dataset_fingerprint(copies[1])
    assert gallery_cache_path(GoodModel(), copies[0], tmp_path) != gallery_cache_path(
        GoodModel(), copies[1], tmp_path
    )  # the cache key stays cheap: path and mtime, nothing read
    edited = tmp_path / "elsewhere" / "queries.jsonl"
    edited.write_text('{"id": "q0", "text": "make it blue"}\n')
    assert dataset_fingerprint(copies[0]) != dataset_fingerprint(copies[1])


def test_first_target_recall_is_reported_beside_any_ground_truth_recall():
    """CIRCO: R@K counts the first target only, R_anyGT@K any ground truth."""
    base = make_split()
    reordered = [dataclasses.replace(q, targets=q.targets[::-1]) for q in base.queries]
    split = dataclasses.replace(base, queries=reordered, recall_first_target=True)
    result = evaluate(GoodModel(), split, progress=False)
    q, g = core_embeddings(GoodModel(), split)
    exclude = gallery_rows(split, [[qq.reference] for qq in split.queries])
    targets = gallery_rows(split, [qq.targets for qq in split.queries])
    ids, _ = rank_gallery(q, g, 10, exclude=exclude)
    first = recall_at_k(ids, targets, split.ks, first_target_only=True)
    any_gt = recall_at_k(ids, targets, split.ks)
    assert {k: result.metrics[f"R@{k}"] for k in split.ks} == pytest.approx(first)
    assert {k: result.metrics[f"R_anyGT@{k}"] for k in split.ks} == pytest.approx(any_gt)
    assert first[1] < any_gt[1]  # the reordered queries' first target is not the one aimed at
    assert "R_anyGT@1" not in evaluate(GoodModel(), base, progress=False).metrics


def test_reference_exclusion_policy():
    kept = evaluate(ImageOnlyModel(), make_split(exclude_reference=False), progress=False)
    for q in make_split().queries:
        assert kept.rankings[q.id][0] == q.reference  # the query *is* the reference image
    assert kept.metrics["R@1"] == 0.0
    removed = evaluate(ImageOnlyModel(), make_split(exclude_reference=True), progress=False)
    assert all(q.reference not in removed.rankings[q.id] for q in make_split().queries)
    assert removed.protocol["exclude_reference"] is True
    assert kept.protocol["exclude_reference"] is False


def test_a_worse_model_scores_lower():
    split = make_split()
    good = evaluate(GoodModel(), split, progress=False)
    worse = evaluate(GoodModel(noise=3.0), split, progress=False)
    image_only = evaluate(ImageOnlyModel(), split, progress=False)
    assert good.metrics["R@1"] > worse.metrics["R@1"]
    assert good.metrics["R@5"] > image_only.metrics["R@5"]
    assert good.metrics["mAP@10"] > image_only.metrics["mAP@10"]


def test_cirr_subset_recall():
    split = make_split(metrics=("recall", "recall_subset"), subsets=True)
    result = evaluate(GoodModel(), split, progress=False)
    q, g = core_embeddings(GoodModel(), split)
    subsets = gallery_rows(split, [qq.subset for qq in split.queries])
    targets = gallery_rows(split, [qq.targets for qq in split.queries])
    ids, _ = rank_gallery(q, g, 3, exclude=[[s[0]] for s in subsets], candidates=subsets)
    want = recall_at_k(ids, targets, [1, 2, 3])
    assert [result.metrics[f"R_subset@{k}"] for k in (1, 2, 3)] == pytest.approx(
        list(want.values())
    )
    avg = (result.metrics["R@5"] + result.metrics["R_subset@1"]) / 2
    assert result.metrics["R_avg"] == pytest.approx(avg)
    assert result.protocol["subset_ks"] == [1, 2, 3]
    for query in split.queries:  # all 5 other members, best first, as CIRR files need
        assert sorted(result.subset_rankings[query.id]) == sorted(query.subset[1:])
    assert result.subset_rankings["q0"][:3] == [split.gallery[j] for j in ids[0].tolist()]


def test_hidden_cirr_test_split_keeps_subset_rankings():
    split = make_split(metrics=("recall", "recall_subset"), subsets=True, hidden=True)
    result = evaluate(GoodModel(), split, progress=False)
    assert result.metrics == {}
    assert all(len(result.subset_rankings[q.id]) == 5 for q in split.queries)
    assert all(len(result.rankings[q.id]) == N_GALLERY - 1 for q in split.queries)


def test_per_query_galleries():
    split = make_split(per_query_gallery=True, exclude_reference=False)
    result = evaluate(GoodModel(), split, progress=False)
    for query in split.queries:
        assert set(result.rankings[query.id]) <= set(query.gallery)
        assert len(result.rankings[query.id]) == len(query.gallery)  # 5 < keep_rankings
    q, g = core_embeddings(GoodModel(), split)
    galleries = gallery_rows(split, [qq.gallery for qq in split.queries])
    targets = gallery_rows(split, [qq.targets for qq in split.queries])
    ids, _ = rank_gallery(q, g, 10, candidates=galleries)
    assert result.metrics["R@2"] == pytest.approx(recall_at_k(ids, targets, [2])[2])
    assert result.protocol["per_query_gallery"] is True


def test_hidden_test_split_keeps_rankings_without_metrics():
    result = evaluate(GoodModel(), make_split(hidden=True), progress=False, keep_rankings=7)
    assert result.metrics == {} and result.per_group == {}
    assert len(result.rankings) == 30 and all(len(r) == 7 for r in result.rankings.values())
    assert "no ground truth" in result.format_table()


def test_json_round_trip_and_table(tmp_path):
    result = evaluate(GoodModel(), make_split(), progress=False, keep_rankings=3)
    text = result.to_json(tmp_path / "result.json")
    assert json.loads((tmp_path / "result.json").read_text()) == json.loads(text)
    assert EvalResult.from_json(text) == result
    table = result.format_table()
    for needle in ("tiny/val", "R@10", "mAP@5", "dress", "mean of groups", "exclude_reference"):
        assert needle in table
    assert "caption_join = ' and '" in table


def test_bad_splits_and_models_are_rejected():
    split = make_split()
    split.queries[0] = CIRQuery("q0", "img00", "#1", targets=("nope",))
    with pytest.raises(ValueError, match="target key 'nope' is not in the split gallery"):
        evaluate(GoodModel(), split, progress=False)
    split = make_split()
    split.queries[0] = CIRQuery("q0", "img00", "#1")
    with pytest.raises(ValueError, match="1 of 30 queries have no targets"):
        evaluate(GoodModel(), split, progress=False)
    with pytest.raises(ValueError, match="unknown metric families"):
        evaluate(GoodModel(), make_split(metrics=("recall", "ndcg")), progress=False)

    class Broken(GoodModel):
        def encode_target(self, images):
            return torch.zeros(len(images) + 1, DIM)

    with pytest.raises(ValueError, match=r"expected a \[\d+, D\] tensor"):
        evaluate(Broken(), make_split(), progress=False)
