"""Image collections: folders, WebDataset shards, JSONL/Parquet manifests, robust loading."""

from __future__ import annotations

import io
import json
import logging
import tarfile
from pathlib import Path

import pytest
from PIL import Image

from opencir.data.collections import (
    CollectionSpec,
    detect_kind,
    expand_braces,
    open_collection,
    parse_where,
    split_member,
)
from opencir.data.images import ImageLoadError
from tests.generate_fixtures import (
    NON_UTF8_NAME,
    fifo,
    make_shard,
    make_world,
    png_bytes,
    shape_image,
)


def _jpeg(image: Image.Image, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", **kwargs)
    return buffer.getvalue()


def test_folder_keys_sidecars_and_classes(tmp_path: Path) -> None:
    (tmp_path / "cats" / "deep").mkdir(parents=True)
    (tmp_path / ".hidden").mkdir()
    shape_image("red", "circle").save(tmp_path / "cats" / "a.png")
    (tmp_path / "cats" / "a.txt").write_text("a red cat\n")
    (tmp_path / "cats" / "a.json").write_text(json.dumps({"split": "train"}))
    shape_image("blue", "square").save(tmp_path / "cats" / "deep" / "b.JPG", "JPEG")
    shape_image("green", "square").save(tmp_path / "top.png")
    shape_image("green", "square").save(tmp_path / ".hidden" / "x.png")
    (tmp_path / "notes.md").write_text("not an image")

    collection = open_collection(tmp_path)
    assert collection.kind == "folder"
    assert collection.keys() == ["cats/a.png", "cats/deep/b.JPG", "top.png"]
    meta = {item.key: item.meta for item in collection.items()}
    assert meta["cats/a.png"] == {"class": "cats", "caption": "a red cat", "split": "train"}
    assert meta["cats/deep/b.JPG"]["class"] == "cats/deep"
    assert meta["top.png"]["class"] == ""
    assert collection.load("cats/deep/b.JPG").mode == "RGB"
    with pytest.raises(ImageLoadError) as info:
        collection.load("../outside.png")
    assert info.value.reason == "missing"


def test_folder_listing_skips_fifos_and_non_utf8_names_by_name(tmp_path: Path, caplog) -> None:
    shape_image("red", "circle").save(tmp_path / "a.png")
    (tmp_path / NON_UTF8_NAME).write_bytes(png_bytes(shape_image("blue", "square")))
    with fifo(tmp_path / "stuck.png"), caplog.at_level(logging.WARNING):
        collection = open_collection(tmp_path)
        assert collection.keys() == ["a.png"]
        with pytest.raises(ImageLoadError) as error:
            collection.read_bytes("stuck.png")  # a key named anyway is refused, not waited on
    assert error.value.reason == "not_a_file"
    assert "stuck.png: not a regular file" in caplog.text
    assert "b'" + str(tmp_path) + "/bad\\xff.png'" in caplog.text


def test_manifest_row_naming_a_fifo_fails_to_load(tmp_path: Path) -> None:
    rows = [{"id": "ok", "file": "ok.png"}, {"id": "pipe", "file": "pipe.png"}]
    (tmp_path / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    shape_image("red", "circle").save(tmp_path / "ok.png")
    with fifo(tmp_path / "pipe.png"):
        collection = open_collection(tmp_path / "rows.jsonl")
        assert collection.load("ok").size == (32, 32)
        with pytest.raises(ImageLoadError) as error:
            collection.load("pipe")
    assert error.value.reason == "not_a_file"


def test_a_manifest_that_is_not_utf8_is_refused_by_file_and_line(tmp_path: Path) -> None:
    (tmp_path / "rows.jsonl").write_bytes(b'{"id": "a", "file": "a.png"}\n{"id": "b\xff"}\n')
    with pytest.raises(ValueError, match=r"rows\.jsonl:2: not valid UTF-8"):
        open_collection(tmp_path / "rows.jsonl").keys()


def test_webdataset_members_with_non_utf8_names_are_skipped(tmp_path: Path, caplog) -> None:
    image = png_bytes(shape_image("red", "circle"))
    make_shard(tmp_path / "s.tar", {"good.png": image, f"{NON_UTF8_NAME[:-4]}.png": image})
    with caplog.at_level(logging.WARNING):
        assert open_collection(tmp_path / "s.tar").keys() == ["good"]
    assert "b'bad\\xff.png'" in caplog.text


def test_where_filters_and_dotted_fields(tmp_path: Path) -> None:
    make_world(tmp_path, n_train=6, n_test=3)
    spec = CollectionSpec(str(tmp_path), where=parse_where(["split=test"]))
    assert len(open_collection(spec)) == 3
    nested = CollectionSpec(str(tmp_path), where=(("attributes.objects", "x"),))
    assert len(open_collection(nested)) == 0
    with pytest.raises(ValueError, match="FIELD=VALUE"):
        parse_where(["split"])


def test_world_layout_is_a_manifest(tmp_path: Path) -> None:
    make_world(tmp_path, n_train=4, n_test=2)
    collection = open_collection(tmp_path)
    assert collection.kind == "manifest"
    assert collection.keys()[:2] == ["img000", "img001"]
    first = collection.items()[0]
    assert first.meta["alt_text"] == "a small red circle in the center"
    assert collection.load("img001").size == (32, 32)
    same = open_collection(tmp_path / "images.jsonl")
    assert same.keys() == collection.keys()


def test_reopen_from_describe(tmp_path: Path) -> None:
    make_world(tmp_path)
    spec = CollectionSpec(str(tmp_path), where=(("split", "train"),), max_pixels=10_000)
    described = open_collection(spec).describe()
    again = open_collection(json.loads(json.dumps(described)))
    assert again.keys() == open_collection(spec).keys()
    assert again.spec.max_pixels == 10_000


def test_manifest_errors_name_the_bad_input(tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "a", "file": "a.png"}\n{"file": "b.png"}\n')
    with pytest.raises(ValueError, match=r"bad.jsonl:2.*key field"):
        open_collection(bad).items()
    dup = tmp_path / "dup.jsonl"
    dup.write_text('{"id": "a", "file": "a.png"}\n{"id": "a", "file": "b.png"}\n')
    with pytest.raises(ValueError, match="duplicate key 'a'"):
        open_collection(dup).items()
    torn = tmp_path / "torn.jsonl"
    torn.write_text('{"id": "a", "file": "a.png"}\n{"id": \n')
    with pytest.raises(ValueError, match=r"torn\.jsonl:2"):
        open_collection(torn).items()
    with pytest.raises(ValueError, match="does not exist"):
        open_collection(tmp_path / "nowhere")
    with pytest.raises(ValueError, match="expected a folder"):
        detect_kind(__file__)


def test_custom_fields_and_missing_files(tmp_path: Path) -> None:
    shape_image("red", "circle").save(tmp_path / "x.png")
    rows = [{"name": "one", "img": "x.png", "cap": "hi"}, {"name": "two", "img": "gone.png"}]
    (tmp_path / "m.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    spec = CollectionSpec(str(tmp_path / "m.jsonl"), key_field="name", file_field="img")
    collection = open_collection(spec)
    assert collection.keys() == ["one", "two"]
    assert collection.load("one").size == (32, 32)
    with pytest.raises(ImageLoadError) as info:
        collection.load("two")
    assert info.value.reason == "missing"


def test_img2dataset_parquet_files_layout(tmp_path: Path) -> None:
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    (tmp_path / "00000").mkdir()
    shape_image("red", "circle").save(tmp_path / "00000" / "000000000.jpg", "JPEG")
    shape_image("blue", "circle").save(tmp_path / "00000" / "000000002.png")
    table = pa.table(
        {
            "key": ["000000000", "000000001", "000000002"],
            "caption": ["a red ball", None, "a blue ball"],
            "status": ["success", "failed_to_download", "success"],
            "url": ["http://x/0", "http://x/1", "http://x/2"],
        }
    )
    pq.write_table(table, tmp_path / "00000.parquet")
    collection = open_collection(tmp_path)
    assert collection.kind == "manifest"
    assert collection.keys() == ["000000000", "000000002"]
    assert collection.items()[0].meta["caption"] == "a red ball"
    assert collection.load("000000002").getpixel((0, 0))[2] > 200


def test_webdataset_shards(tmp_path: Path) -> None:
    red, blue = shape_image("red", "circle"), shape_image("blue", "square")
    make_shard(
        tmp_path / "shards" / "s-000.tar",
        {
            "a/0001.jpg": _jpeg(red),
            "a/0001.txt": b"a red circle",
            "a/0001.json": json.dumps({"split": "train"}).encode(),
            "a/0001.cls": b"3",
            "a/0002.seg.png": png_bytes(blue),
        },
    )
    make_shard(tmp_path / "shards" / "s-001.tar", {"0003.png": png_bytes(blue), "0003.txt": b"b"})
    for source in (tmp_path / "shards", str(tmp_path / "shards" / "s-{000..001}.tar")):
        collection = open_collection(source)
        assert collection.kind == "webdataset"
        assert collection.keys() == ["0003", "a/0001", "a/0002"]
    meta = {item.key: item.meta for item in collection.items()}
    assert meta["a/0001"] == {
        "shard": "s-000.tar",
        "caption": "a red circle",
        "split": "train",
        "class": "3",
    }
    assert collection.read_bytes("0003") == png_bytes(blue)
    assert collection.load("a/0002").size == (32, 32)
    with pytest.raises(ImageLoadError):
        collection.load("nope")


def test_webdataset_truncated_shard_keeps_members_before_damage(tmp_path: Path, caplog) -> None:
    members = {f"{i:04d}.png": png_bytes(shape_image("red", "circle")) for i in range(4)}
    shard = make_shard(tmp_path / "t.tar", members)
    with tarfile.open(shard) as archive:
        cut = archive.getmember("0002.png").offset_data + 20  # inside the third image
    shard.write_bytes(shard.read_bytes()[:cut])
    with caplog.at_level(logging.WARNING):
        collection = open_collection(shard)
        keys = collection.keys()
    assert keys == ["0000", "0001", "0002"]
    assert collection.load("0001").size == (32, 32)
    with pytest.raises(ImageLoadError) as info:
        collection.load("0002")
    assert info.value.reason == "corrupt"


def test_webdataset_naming_helpers() -> None:
    assert split_member("dir/abc.seg.JPG") == ("dir/abc", "seg.jpg")
    assert expand_braces("s-{08..10}.tar") == ["s-08.tar", "s-09.tar", "s-10.tar"]


def test_bad_images_become_load_errors(tmp_path: Path) -> None:
    (tmp_path / "text.jpg").write_bytes(b"hello, not a jpeg")
    good = png_bytes(Image.new("RGB", (64, 64), (1, 2, 3)))
    (tmp_path / "truncated.png").write_bytes(good[: len(good) // 3])
    Image.new("RGB", (200, 200)).save(tmp_path / "bomb.png")
    Image.new("CMYK", (10, 10), (0, 255, 0, 0)).save(tmp_path / "cmyk.jpg")
    palette = Image.new("P", (10, 10))
    palette.info["transparency"] = 0
    palette.save(tmp_path / "palette.png", transparency=0)
    frames = [Image.new("RGB", (6, 6), c) for c in ((255, 0, 0), (0, 255, 0))]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:])
    collection = open_collection(CollectionSpec(str(tmp_path), max_pixels=100 * 100))
    reasons = {}
    for item in collection.items():
        try:
            assert collection.load(item.key).mode == "RGB"
        except ImageLoadError as error:
            reasons[item.key] = error.reason
    assert reasons == {
        "text.jpg": "not_an_image",
        "truncated.png": "corrupt",
        "bomb.png": "too_large",
    }
