"""Benchmark adapters on tiny replicas of the official layouts (built here, never downloaded)."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest
import torch

from opencir.eval.benchmarks import (
    BENCHMARKS,
    MalformedDatasetFileError,
    MissingDatasetFileError,
    list_benchmarks,
    load_benchmark,
)
from opencir.eval.benchmarks.circo import TEMPLATE_WITH_CONCEPT
from opencir.eval.benchmarks.genecis import BoxCrop
from opencir.eval.evaluate import evaluate
from opencir.eval.report import recall_curve
from tests.fixtures_benchmarks import (
    CIRCO_IDS,
    CIRCO_VAL,
    CIRR_MEMBERS,
    CIRR_QUERIES_PER_SET,
    CIRR_SETS,
    COCO_VAL_IDS,
    FIQ_CATEGORIES,
    FIQ_IMAGES,
    FIQ_PAIRS,
    GENECIS_DISTRACTORS,
    GENECIS_RECORDS,
    make_circo,
    make_cirr,
    make_fashioniq,
    make_genecis,
    write_json,
)

# ----------------------------------------------------------------------------- registry


def test_registry_names_every_benchmark():
    assert set(list_benchmarks()) == {
        "cirr",
        "fashioniq",
        "circo",
        "genecis",
        "shapescir",
        "emojicir",
    }
    assert callable(BENCHMARKS["shapescir"])


def test_unknown_benchmark_and_option_are_clear(tmp_path):
    with pytest.raises(ValueError, match=r"unknown benchmark 'nope'.*cirr"):
        load_benchmark("nope", tmp_path, "val")
    make_cirr(tmp_path)
    with pytest.raises(ValueError, match=r"unknown option.*'colour'.*exclude_reference"):
        load_benchmark("cirr", tmp_path, "val", colour="red")
    with pytest.raises(ValueError, match="unknown split 'dev2'"):
        load_benchmark("cirr", tmp_path, "dev2")


def test_missing_root_names_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "absent")):
        load_benchmark("circo", tmp_path / "absent", "val")


# ----------------------------------------------------------------------------- CIRR


@pytest.mark.parametrize("nested", [False, True])
def test_cirr_val(tmp_path, nested):
    split = load_benchmark("CIRR", make_cirr(tmp_path, nested=nested), "dev")
    assert (split.benchmark, split.split) == ("cirr", "val")
    assert len(split.queries) == CIRR_SETS * CIRR_QUERIES_PER_SET
    assert len(split.gallery) == CIRR_SETS * CIRR_MEMBERS
    q = split.queries[1]
    assert q.id == "2001" and q.reference == "dev-0-0-img0" and q.targets == ("dev-0-2-img0",)
    assert q.subset == tuple(f"dev-0-{m}-img0" for m in range(1, CIRR_MEMBERS))
    assert q.text == "make it number 1" and q.meta["target_soft"] == {"dev-0-2-img0": 1.0}
    assert split.exclude_reference and split.protocol["exclude_reference"] is True
    assert split.ks == (1, 5, 10, 50) and split.subset_ks == (1, 2, 3)
    assert split.metrics == ("recall", "recall_subset")
    image = split.load_image(q.reference)
    assert image.mode == "RGB" and image.size == (8, 8)
    assert all(Path(f).is_file() for f in split.fingerprint_files)


def test_cirr_test1_and_train(tmp_path):
    make_cirr(tmp_path)
    test = load_benchmark("cirr", tmp_path, "test", exclude_reference=False)
    assert test.split == "test1" and all(q.targets == () for q in test.queries)
    assert test.protocol["exclude_reference"] is False and not test.exclude_reference
    train = load_benchmark("cirr", tmp_path, "train")
    assert train.load_image(train.gallery[-1]).size == (8, 8)  # nested ./train/<n>/ paths


def test_cirr_missing_file_names_path_and_source(tmp_path):
    make_cirr(tmp_path)
    (tmp_path / "captions" / "cap.rc2.val.json").unlink()
    with pytest.raises(MissingDatasetFileError) as err:
        load_benchmark("cirr", tmp_path, "val")
    assert isinstance(err.value, FileNotFoundError)
    message = str(err.value)
    assert str(tmp_path / "captions" / "cap.rc2.val.json") in message
    assert str(tmp_path / "cirr" / "captions" / "cap.rc2.val.json") in message
    assert "Cuberick-Orion/CIRR" in message and "cirr_dataset" in message


def test_cirr_malformed_json_and_missing_field(tmp_path):
    make_cirr(tmp_path)
    path = tmp_path / "captions" / "cap.rc2.val.json"
    records = json.loads(path.read_text())
    del records[2]["caption"]
    write_json(path, records)
    with pytest.raises(MalformedDatasetFileError, match=r"record 2 lacks required field 'caption'"):
        load_benchmark("cirr", tmp_path, "val")
    path.write_text('[{"pairid": 1,')
    with pytest.raises(ValueError, match=rf"{path}.*invalid JSON at line 1"):
        load_benchmark("cirr", tmp_path, "val")


def test_cirr_missing_images_fail_at_load(tmp_path):
    make_cirr(tmp_path)
    for image in (tmp_path / "dev").iterdir():
        image.unlink()
    with pytest.raises(FileNotFoundError, match="dev-0-0-img0"):
        load_benchmark("cirr", tmp_path, "val")


# ----------------------------------------------------------------------------- FashionIQ


def test_fashioniq_one_category(tmp_path):
    split = load_benchmark("fashioniq", make_fashioniq(tmp_path), "val", category="dress")
    assert len(split.queries) == FIQ_PAIRS and len(split.gallery) == FIQ_IMAGES
    q = split.queries[0]
    assert q.id == "dress/0" and q.reference == "DRESS000" and q.targets == ("DRESS001",)
    assert q.text == "is dress 0 and has 0 dots" and q.gallery is None
    assert split.ks == (10, 50) and not split.exclude_reference
    assert split.protocol["category"] == "dress" and split.protocol["caption_join"] == "and"


def test_fashioniq_all_categories_per_query_gallery(tmp_path):
    split = load_benchmark("fashioniq", make_fashioniq(tmp_path), "val")
    assert len(split.queries) == FIQ_PAIRS * len(FIQ_CATEGORIES)
    assert len(split.gallery) == FIQ_IMAGES * len(FIQ_CATEGORIES)
    assert split.group is not None
    assert {split.group(q) for q in split.queries} == set(FIQ_CATEGORIES)
    for q in split.queries:
        assert q.gallery == tuple(f"{split.group(q).upper()}{i:03d}" for i in range(FIQ_IMAGES))
        assert q.targets[0] in q.gallery
    shirt = next(q for q in split.queries if q.meta["category"] == "shirt")
    assert split.load_image(shirt.reference).size == (8, 8)  # .jpg accepted


def test_fashioniq_switches(tmp_path):
    make_fashioniq(tmp_path)
    split = load_benchmark(
        "fashioniq",
        tmp_path,
        "val",
        category="toptee",
        both_orders=True,
        caption_join="or",
        strip_captions=False,
        exclude_reference=True,
    )
    assert len(split.queries) == 2 * FIQ_PAIRS
    forward, backward = split.queries[0], split.queries[1]
    assert forward.text == "is toptee 0. or has 0 dots?"
    assert backward.text == "has 0 dots? or is toptee 0." and backward.id == "toptee/0/reversed"
    assert forward.meta["pair"] == backward.meta["pair"] == "toptee/0"
    assert split.exclude_reference and split.protocol["both_orders"] is True
    test = load_benchmark("fashioniq", tmp_path, "test")
    assert all(q.targets == () for q in test.queries)
    with pytest.raises(ValueError, match="unknown category 'hat'"):
        load_benchmark("fashioniq", tmp_path, "val", category="hat")


def test_fashioniq_errors(tmp_path):
    make_fashioniq(tmp_path)
    path = tmp_path / "captions" / "cap.shirt.val.json"
    write_json(path, [{"candidate": "SHIRT000", "target": "SHIRT001", "captions": []}])
    with pytest.raises(
        MalformedDatasetFileError, match=r"cap.shirt.val.json.*record 0.*'captions'"
    ):
        load_benchmark("fashioniq", tmp_path, "val")
    for image in (tmp_path / "images").iterdir():
        image.unlink()
    (tmp_path / "images").rmdir()
    with pytest.raises(MissingDatasetFileError, match=r"(?s)images folder.*fashion-iq"):
        load_benchmark("fashioniq", tmp_path, "val", category="dress")


# ----------------------------------------------------------------------------- CIRCO


def test_circo_val(tmp_path):
    split = load_benchmark("circo", make_circo(tmp_path), "val")
    assert len(split.queries) == len(CIRCO_VAL)
    assert tuple(split.gallery) == tuple(str(i) for i in CIRCO_IDS)
    q = split.queries[0]
    assert q.id == "0" and q.reference == "8" and q.targets == ("12", "25", "37")
    assert q.text == "is asleep" and q.meta["target_img_id"] == "12"
    assert split.metrics == ("map", "recall") and split.ks == (5, 10, 25, 50)
    assert not split.exclude_reference
    assert split.protocol["query_template"] == "{relative_caption}"
    assert split.load_image("116").size == (8, 8)


def test_circo_template_and_test_split(tmp_path):
    make_circo(tmp_path)
    split = load_benchmark("circo", tmp_path, "val", query_template=TEMPLATE_WITH_CONCEPT)
    assert split.queries[1].text == "a car that is red"
    assert split.protocol["query_template"] == TEMPLATE_WITH_CONCEPT
    test = load_benchmark("circo", tmp_path, "test")
    assert [q.id for q in test.queries] == ["10", "11"]
    assert all(q.targets == () for q in test.queries)
    with pytest.raises(ValueError, match=r"unknown placeholder.*'caption'"):
        load_benchmark("circo", tmp_path, "val", query_template="{caption}")


class CircoOracle:
    """Knows every fixture image by its pixels; "is asleep" ranks a second ground truth first
    and its first target (``target_img_id``) last, every other query finds its first target."""

    def __init__(self, split) -> None:
        self.rows = {split.load_image(k).tobytes(): i for i, k in enumerate(split.gallery)}
        self.row = {k: i for i, k in enumerate(split.gallery)}

    def fingerprint(self) -> str:
        return "circo-oracle"

    def encode_target(self, images):
        return torch.eye(len(self.rows))[[self.rows[im.tobytes()] for im in images]]

    def encode_query(self, images, texts):
        by_text = {q["cap"]: q for q in CIRCO_VAL}
        out = torch.zeros(len(texts), len(self.rows))
        for i, text in enumerate(texts):
            q = by_text[text]
            if text == "is asleep":
                out[i, self.row[str(q["gts"][1])]] = 1.0
                out[i, self.row[str(q["target"])]] = -1.0
            else:
                out[i, self.row[str(q["target"])]] = 1.0
        return out


def test_circo_official_recall_and_one_gallery_cache_for_val_and_test(tmp_path):
    make_circo(tmp_path / "circo")
    val, test = (load_benchmark("circo", tmp_path / "circo", s) for s in ("val", "test"))
    assert val.recall_first_target and "target_img_id only" in val.protocol["recall"]
    cache, model = tmp_path / "cache", CircoOracle(val)
    first = evaluate(model, val, cache_dir=cache, progress=False)
    assert first.metrics["R@5"] == pytest.approx(200 / 3)  # "is asleep" misses target_img_id
    assert first.metrics["R_anyGT@5"] == 100.0  # ... but finds another ground truth
    ks, curve = recall_curve(first, val)  # the report's recall plot counts as R@K does
    assert curve[ks.index(5)] == first.metrics["R@5"]
    second = evaluate(model, test, cache_dir=cache, progress=False)
    assert second.gallery_cache_hit and len(list(cache.glob("*.npy"))) == 1


def test_circo_errors(tmp_path):
    make_circo(tmp_path)
    info = tmp_path / "COCO2017_unlabeled" / "annotations" / "image_info_unlabeled2017.json"
    write_json(info, {"info": {}})
    with pytest.raises(MalformedDatasetFileError, match="missing required field 'images'"):
        load_benchmark("circo", tmp_path, "val")
    info.unlink()
    with pytest.raises(FileNotFoundError) as err:
        load_benchmark("circo", tmp_path, "val")
    assert str(info) in str(err.value) and "miccunifi/CIRCO" in str(err.value)
    write_json(tmp_path / "annotations" / "val.json", [{"id": 0, "reference_img_id": 8}])
    with pytest.raises(MalformedDatasetFileError, match="record 0 lacks required field"):
        load_benchmark("circo", tmp_path, "val")


# ----------------------------------------------------------------------------- GeneCIS


def test_genecis_all_tasks(tmp_path):
    split = load_benchmark("genecis", make_genecis(tmp_path), "test")
    assert len(split.queries) == 4 * GENECIS_RECORDS
    assert split.ks == (1, 2, 3) and split.metrics == ("recall",)
    assert split.group is not None
    tasks = {split.group(q) for q in split.queries}
    assert tasks == {"focus_attribute", "change_attribute", "focus_object", "change_object"}
    for q in split.queries:
        assert q.gallery is not None and len(q.gallery) == 1 + GENECIS_DISTRACTORS
        assert q.gallery[0] == q.targets[0] and set(q.gallery) <= set(split.gallery)
    obj = next(q for q in split.queries if q.meta["task"] == "focus_object")
    assert obj.reference == f"coco:{COCO_VAL_IDS[0]}" and obj.text == "focus_object condition 0"
    assert split.load_image(obj.reference).size == (10, 10)
    assert split.protocol["crop_dilation"] == 0.7 and split.protocol["pad_square"] is True


def test_genecis_attribute_crop(tmp_path):
    make_genecis(tmp_path)
    split = load_benchmark("genecis", tmp_path, "test", task="change_attribute")
    q = split.queries[0]
    assert q.reference == "vg:1@40,30,20,10"
    # Official crop: left=40-0.7*20=26, top=30-0.7*10=23, 1.7x the box -> 34x17, padded square.
    assert split.load_image(q.reference).size == (34, 34)
    far = next(k for k in split.gallery if k.startswith("vg:6@"))  # lives in VG_100K_2
    assert split.load_image(far).size == (34, 34)  # box [40,30,20,14] -> 34x24 -> square
    bare = load_benchmark(
        "genecis", tmp_path, "test", task="change_attribute", crop_dilation=0, pad_square=False
    )
    assert bare.load_image(q.reference).size == (20, 10)
    assert bare.protocol["crop_dilation"] == 0


def test_box_crop_clips_at_the_border():
    from PIL import Image

    image = Image.new("RGB", (50, 40))
    assert BoxCrop((0.0, 0.0, 20.0, 10.0), 0.7, False)(image).size == (34, 17)
    assert BoxCrop((40.0, 30.0, 20.0, 20.0), 0.7, False)(image).size == (24, 24)


def test_genecis_errors(tmp_path):
    make_genecis(tmp_path)
    path = tmp_path / "genecis" / "focus_attribute.json"
    records = json.loads(path.read_text())
    records[1]["gallery"][2]["instance_bbox"] = [1, 2]
    write_json(path, records)
    with pytest.raises(MalformedDatasetFileError, match=r"record 1: 'gallery\[2\].instance_bbox'"):
        load_benchmark("genecis", tmp_path, "test", task="focus_attribute")
    (tmp_path / "genecis" / "change_object.json").unlink()
    with pytest.raises(MissingDatasetFileError, match=r"(?s)change_object\.json.*facebookresearch"):
        load_benchmark("genecis", tmp_path, "test", task="change_object")
    with pytest.raises(ValueError, match="unknown task"):
        load_benchmark("genecis", tmp_path, "test", task="swap")


def test_splits_pickle_for_dataloader_workers(tmp_path):
    split = load_benchmark("genecis", make_genecis(tmp_path), "test")
    load_image, group = pickle.loads(pickle.dumps((split.load_image, split.group)))
    q = split.queries[0]
    assert load_image(q.reference).size == split.load_image(q.reference).size
    assert group(q) == "focus_attribute"
    with pytest.raises(KeyError, match="unknown image key"):
        load_image("nope")
