"""Index build / load / search / add / remove, against exact brute force and real files."""

from __future__ import annotations

import json
import logging
import os
import shutil
import stat
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import opencir
from opencir.data.images import load_image
from opencir.index import (
    GalleryIndex,
    IndexFormatError,
    IndexModelMismatchError,
    QueryError,
    Searcher,
    SourceError,
    UnknownItemError,
    add_images,
    build_index,
    clean_text,
    iter_sources,
    read_manifest,
    remove_images,
    resolve_model,
)
from opencir.index.manifest import GalleryIndexError, file_info
from tests.generate_fixtures import NON_UTF8_NAME, fifo
from tests.test_serve_support import (
    FAST,
    FakeRetriever,
    make_checkpoint,
    make_gallery,
    solid_images,
)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A real tiny model indexed over a folder with two unreadable files."""
    root = tmp_path_factory.mktemp("tiny")
    checkpoint = make_checkpoint(root / "ckpt")
    paths = make_gallery(root / "gallery", 15)
    (root / "gallery" / "broken.jpg").write_bytes(b"this is not a JPEG")
    data = (root / "gallery" / "img000.png").read_bytes()
    (root / "gallery" / "nested" / "truncated.png").write_bytes(data[: len(data) // 2])
    (root / "gallery" / "notes.txt").write_text("not an image extension: ignored")
    model = opencir.load(checkpoint)
    manifest = build_index(model, root / "gallery", root / "index", FAST, str(checkpoint))
    return {"root": root, "ckpt": checkpoint, "paths": paths, "model": model, "manifest": manifest}


def test_manifest_records_model_dimension_counts_and_checksums(tiny: dict) -> None:
    manifest = read_manifest(tiny["root"] / "index")
    assert manifest == tiny["manifest"]
    assert manifest.model.fingerprint == tiny["model"].fingerprint()
    assert manifest.model.spec == str(tiny["ckpt"].resolve())
    assert (manifest.dim, manifest.count, manifest.next_id) == (tiny["model"].embed_dim, 15, 15)
    assert (manifest.metric, manifest.normalization, manifest.factory) == (
        "inner_product",
        "l2",
        "Flat",
    )
    assert manifest.skipped == {"not_an_image": 1, "corrupt": 1}
    for name, info in manifest.files.items():
        assert file_info(tiny["root"] / "index" / name) == info
    skipped = [json.loads(line) for line in (tiny["root"] / "index" / "skipped.jsonl").open()]
    assert sorted(r["name"] for r in skipped) == ["broken.jpg", "nested/truncated.png"]
    assert not list(tiny["root"].glob(".index.*")), "no staging or partial folders left behind"


def test_items_map_ids_to_paths(tiny: dict) -> None:
    index = GalleryIndex.open(tiny["root"] / "index")
    assert [item.id for item in index.page(0, 100)] == list(range(15))
    item = index.find("nested/img001.png")
    assert item.path == (tiny["root"] / "gallery" / "nested" / "img001.png").resolve()
    assert index.get(item.id) == item
    with pytest.raises(UnknownItemError, match="id 999"):
        index.get(999)


def test_embeddings_are_the_models_and_mmap_round_trip_is_exact(tiny: dict) -> None:
    mapped = GalleryIndex.open(tiny["root"] / "index", mmap=True, verify=True)
    loaded = GalleryIndex.open(tiny["root"] / "index", mmap=False)
    embeddings = mapped.embeddings()
    assert isinstance(embeddings, np.memmap)
    items = mapped.page(0, 100)
    expected = tiny["model"].encode_target([load_image(i.path) for i in items]).numpy()
    np.testing.assert_allclose(embeddings, expected, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(embeddings, axis=1), 1.0, atol=1e-5)
    queries = np.random.default_rng(0).normal(size=(5, mapped.dim)).astype(np.float32)
    a, b = mapped.search(queries, 7), loaded.search(queries, 7)
    assert [[(h.item.id, h.score) for h in q] for q in a] == [
        [(h.item.id, h.score) for h in q] for q in b
    ]


def _brute_force(embeddings: np.ndarray, ids: np.ndarray, queries: np.ndarray, k: int):
    scores = queries @ embeddings.T
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return ids[order], np.take_along_axis(scores, order, axis=1)


def test_flat_index_equals_exact_brute_force(tmp_path: Path) -> None:
    solid_images(tmp_path / "imgs", 200)
    build_index(FakeRetriever(), tmp_path / "imgs", tmp_path / "idx", FAST)
    index = GalleryIndex.open(tmp_path / "idx")
    embeddings = np.asarray(index.embeddings())
    ids = np.array([item.id for item in index.page(0, 1000)])
    queries = np.random.default_rng(1).normal(size=(20, 16)).astype(np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    expected_ids, expected_scores = _brute_force(embeddings, ids, queries, 10)
    hits = index.search(queries, 10)
    np.testing.assert_array_equal([[h.item.id for h in q] for q in hits], expected_ids)
    np.testing.assert_allclose([[h.score for h in q] for q in hits], expected_scores, atol=1e-5)
    assert [h.rank for h in hits[0]] == list(range(1, 11))


def test_search_excludes_and_clamps_k(tmp_path: Path) -> None:
    solid_images(tmp_path / "imgs", 12)
    build_index(FakeRetriever(), tmp_path / "imgs", tmp_path / "idx", FAST)
    index = GalleryIndex.open(tmp_path / "idx")
    vector = np.asarray(index.embeddings()[3])
    assert index.search(vector, 1)[0][0].item.id == 3
    assert 3 not in [h.item.id for h in index.search(vector, 5, exclude=[{3}])[0]]
    assert len(index.search(vector, 500)[0]) == 12
    with pytest.raises(ValueError, match=r"\[Q, 16\]"):
        index.search(np.zeros((1, 5), np.float32), 3)


@pytest.mark.parametrize("factory", ["IVF8,Flat", "HNSW16", "PQ8x4", "IVF4,PQ8x4"])
def test_trained_factories_search_well(tmp_path: Path, factory: str) -> None:
    solid_images(tmp_path / "imgs", 400)
    config = replace(FAST, factory=factory, shard_size=128, batch_size=64)
    manifest = build_index(FakeRetriever(), tmp_path / "imgs", tmp_path / "idx", config)
    assert manifest.factory == factory
    index = GalleryIndex.open(tmp_path / "idx")
    embeddings = np.asarray(index.embeddings())
    ids = np.arange(len(embeddings))
    expected, _ = _brute_force(embeddings, ids, embeddings[:50], 10)
    got = [[h.item.id for h in q] for q in index.search(embeddings[:50], 10)]
    recall = np.mean([len(set(g) & set(e)) / 10 for g, e in zip(got, expected, strict=True)])
    top1 = np.mean([g[0] == i for i, g in enumerate(got)])
    assert top1 >= 0.9 and recall >= (0.9 if "PQ" not in factory else 0.5), (top1, recall)


def test_bad_factory_fails_before_embedding(tmp_path: Path) -> None:
    solid_images(tmp_path / "imgs", 4)
    with pytest.raises(ValueError, match="PQ5"):
        build_index(
            FakeRetriever(), tmp_path / "imgs", tmp_path / "idx", replace(FAST, factory="PQ5")
        )


def test_interrupted_build_resumes_without_redoing_finished_shards(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import opencir.index.build as build_module

    solid_images(tmp_path / "imgs", 40)
    config = replace(FAST, shard_size=8, batch_size=4, workers=1)
    calls: list[Path] = []
    interrupted: list[bool] = []
    real_load = build_module.load_image

    def flaky(path: Path, **kwargs: object) -> Image.Image:
        calls.append(Path(path))
        if len(calls) == 21 and not interrupted:  # in the third shard, once
            interrupted.append(True)
            raise KeyboardInterrupt
        return real_load(path, **kwargs)

    monkeypatch.setattr(build_module, "load_image", flaky)
    with pytest.raises(KeyboardInterrupt):
        build_index(FakeRetriever(), tmp_path / "imgs", tmp_path / "idx", config)
    assert not (tmp_path / "idx").exists()
    finished = sorted(p.name for p in (tmp_path / ".idx.partial").glob("shard-*.npz"))
    assert finished == ["shard-000000.npz", "shard-000001.npz"]
    calls.clear()
    build_index(FakeRetriever(), tmp_path / "imgs", tmp_path / "idx", config)
    assert len(calls) == 40 - 16, "finished shards are not embedded again"
    monkeypatch.setattr(build_module, "load_image", real_load)
    build_index(FakeRetriever(), tmp_path / "imgs", tmp_path / "fresh", config)
    resumed, fresh = GalleryIndex.open(tmp_path / "idx"), GalleryIndex.open(tmp_path / "fresh")
    np.testing.assert_array_equal(resumed.embeddings(), fresh.embeddings())
    assert [i.name for i in resumed.page(0, 99)] == [i.name for i in fresh.page(0, 99)]
    assert not (tmp_path / ".idx.partial").exists()


@pytest.mark.parametrize("factory", ["Flat", "IVF4,Flat"])
def test_add_then_remove_keeps_ids_stable(tmp_path: Path, factory: str) -> None:
    paths = solid_images(tmp_path / "imgs", 60)
    config = replace(FAST, factory=factory)
    build_index(FakeRetriever(), tmp_path / "imgs", tmp_path / "idx", config)
    extra = tmp_path / "imgs" / "extra"
    extra.mkdir()
    for i in range(60, 66):
        Image.new("RGB", (8, 8), (i, 1, 9)).save(extra / f"e{i}.png")
    manifest = add_images(tmp_path / "idx", tmp_path / "imgs", FakeRetriever(), config)
    assert (manifest.count, manifest.next_id) == (66, 66)
    index = GalleryIndex.open(tmp_path / "idx", verify=True)
    new = index.find("extra/e63.png")
    assert new.id >= 60
    vector = FakeRetriever().encode_target([load_image(new.path)]).numpy()
    assert index.search(vector, 1)[0][0].item.id == new.id
    paths[5].unlink()
    remove_images(tmp_path / "idx", ids=[new.id], names=["c0002.png"])
    manifest = remove_images(tmp_path / "idx", missing_files=True)
    assert (manifest.count, manifest.next_id) == (63, 66)
    index = GalleryIndex.open(tmp_path / "idx", verify=True)
    assert len(index.embeddings()) == 63
    hits = index.search(vector, 63)[0]
    assert {h.item.name for h in hits}.isdisjoint({"extra/e63.png", "c0002.png", "c0005.png"})
    assert index.find("c0010.png").id == 10, "surviving ids do not move"
    with pytest.raises(UnknownItemError):
        remove_images(tmp_path / "idx", names=["c0002.png"])


def test_index_built_by_another_model_is_refused(tiny: dict, tmp_path: Path) -> None:
    other = make_checkpoint(tmp_path / "other", seed=99)
    with pytest.raises(IndexModelMismatchError, match="fingerprint") as error:
        Searcher.open(tiny["root"] / "index", other)
    assert tiny["model"].fingerprint() in str(error.value)
    with pytest.raises(IndexModelMismatchError):
        add_images(tiny["root"] / "index", tiny["root"] / "gallery", opencir.load(other))


def test_existing_index_needs_overwrite_and_damage_is_detected(tiny: dict, tmp_path: Path) -> None:
    with pytest.raises(FileExistsError, match="overwrite"):
        build_index(tiny["model"], tiny["root"] / "gallery", tiny["root"] / "index", FAST)
    copy = tmp_path / "copy"
    shutil.copytree(tiny["root"] / "index", copy)
    with (copy / "embeddings.npy").open("r+b") as handle:
        handle.seek(-3, 2)
        handle.write(b"\x00\x01\x02")
    GalleryIndex.open(copy)  # sizes still match: only the checksum notices
    with pytest.raises(IndexFormatError, match=r"checksum of embeddings\.npy"):
        GalleryIndex.open(copy, verify=True)
    (copy / "vectors.faiss").write_bytes(b"short")
    with pytest.raises(IndexFormatError, match=r"vectors\.faiss has 5 bytes"):
        GalleryIndex.open(copy)
    with pytest.raises(IndexFormatError, match="not an OpenCIR index"):
        GalleryIndex.open(tiny["root"] / "gallery")


def test_sources_read_folders_text_and_jsonl_lists(tmp_path: Path) -> None:
    make_gallery(tmp_path / "g", 4)
    (tmp_path / "list.txt").write_text("# two images\ng/img000.png\n\ng/nested/img001.png\n")
    rows = [
        {"id": "a", "file": "g/img002.png", "alt_text": "a blue circle"},
        {"path": "g/nested/img003.png"},
    ]
    (tmp_path / "list.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    assert [s.name for s in iter_sources(tmp_path / "g")] == [
        "img000.png",
        "img002.png",
        "nested/img001.png",
        "nested/img003.png",
    ]
    text = list(iter_sources(tmp_path / "list.txt"))
    assert [s.path for s in text] == [
        (tmp_path / "g/img000.png").resolve(),
        (tmp_path / "g/nested/img001.png").resolve(),
    ]
    jsonl = list(iter_sources(tmp_path / "list.jsonl"))
    assert [(s.name, dict(s.metadata)) for s in jsonl] == [
        ("a", {"alt_text": "a blue circle"}),
        ("g/nested/img003.png", {}),
    ]
    (tmp_path / "bad.jsonl").write_text('{"path": "x.png"}\n{"name": 3}\n')
    with pytest.raises(SourceError, match=r"bad.jsonl:2: no image path"):
        list(iter_sources(tmp_path / "bad.jsonl"))
    with pytest.raises(SourceError, match="does not exist"):
        iter_sources(tmp_path / "nowhere")


def test_duplicate_names_in_a_list_are_refused(tmp_path: Path) -> None:
    solid_images(tmp_path / "g", 2)
    (tmp_path / "dup.txt").write_text("g/c0000.png\ng/c0000.png\n")
    with pytest.raises(ValueError, match="appears twice"):
        build_index(FakeRetriever(), tmp_path / "dup.txt", tmp_path / "idx", FAST)


def test_text_policy() -> None:
    assert clean_text("  make it\n\tred  ") == "make it red"
    for text, code in [("", "empty_text"), (" \n\t", "empty_text"), ("x" * 501, "text_too_long")]:
        with pytest.raises(QueryError) as error:
            clean_text(text)
        assert error.value.code == code and error.value.field == "text"


def test_searcher_by_id_and_by_image_agree_and_flag_truncation(tiny: dict) -> None:
    searcher = Searcher.open(tiny["root"] / "index")
    item = searcher.index.find("img004.png")
    by_id = searcher.search("make it blue", reference_id=item.id, k=5, exclude_reference=False)
    by_image = searcher.search("make it blue", image=load_image(item.path), k=5)
    assert [h.item.id for h in by_id.hits] == [h.item.id for h in by_image.hits]
    assert by_id.reference == item and not by_id.text_truncated
    query = tiny["model"].encode_query([load_image(item.path)], ["make it blue"]).numpy()[0]
    embeddings = np.asarray(searcher.index.embeddings())
    best = np.argsort(-(embeddings @ query), kind="stable")[:5]
    assert [h.item.id for h in by_id.hits] == [int(i) for i in best]
    long_text = "make it blue " * 20
    assert searcher.search(long_text, reference_id=item.id, k=1).text_truncated
    with pytest.raises(QueryError, match="exactly one reference"):
        searcher.search("x", k=1)


def test_resolve_model_spellings(tiny: dict, tmp_path: Path) -> None:
    assert resolve_model(tiny["ckpt"]).fingerprint() == tiny["model"].fingerprint()
    assert resolve_model("image-only-tiny").config.name == "image-only-tiny"
    with pytest.raises(ValueError, match="neither a checkpoint folder"):
        resolve_model(tmp_path / "missing-dir")
    with pytest.raises(ValueError, match="neither an existing folder nor a Hugging Face repo id"):
        resolve_model(f"sum-tiny@{tmp_path / 'missing'}")


def _hf_backbone(folder: Path) -> Path:
    """The tiny backbone saved with ``save_pretrained``, as NAME@DIR reads it."""
    from opencir.models.backbones import get_family
    from opencir.models.registry import get_model_config
    from opencir.models.tokenizer import byte_level_tokenizer

    backbone = get_model_config("sum-tiny").backbone
    family = get_family(backbone.family)
    family.hf_model(family.hf_config(**backbone.architecture)).save_pretrained(folder)
    byte_level_tokenizer(backbone.max_text_length).save_pretrained(folder)
    return folder


def test_name_at_hf_directory_is_reproducible(tmp_path: Path) -> None:
    """The SEARCH.md recipe: NAME@DIR of a save_pretrained CLIP gives stable fingerprints."""
    spec = f"sum-tiny@{_hf_backbone(tmp_path / 'clip')}"
    torch.manual_seed(1)
    first = resolve_model(spec).fingerprint()
    torch.manual_seed(2)
    assert resolve_model(spec).fingerprint() == first


def test_build_skips_fifos_and_non_utf8_names_with_a_warning(tmp_path: Path, caplog) -> None:
    paths = solid_images(tmp_path / "imgs", 4)
    shutil.copy(paths[0], tmp_path / "imgs" / NON_UTF8_NAME)
    with fifo(tmp_path / "imgs" / "stuck.png"), caplog.at_level(logging.WARNING):
        manifest = build_index(FakeRetriever(), tmp_path / "imgs", tmp_path / "idx", FAST)
    assert manifest.count == 4 and manifest.skipped == {}
    assert "stuck.png: not a regular file" in caplog.text
    assert "bad\\xff.png" in caplog.text
    index = GalleryIndex.open(tmp_path / "idx")
    assert sorted(item.name for item in index.page(0, 10)) == [p.name for p in paths]
    index.close()


def test_a_list_naming_a_non_utf8_path_is_refused_by_file_and_line(tmp_path: Path) -> None:
    solid_images(tmp_path / "g", 1)
    (tmp_path / "list.txt").write_bytes(b"g/c0000.png\ng/bad\xff.png\n")
    with pytest.raises(ValueError, match=r"list\.txt:2: not valid UTF-8 \(byte 0xff"):
        build_index(FakeRetriever(), tmp_path / "list.txt", tmp_path / "idx", FAST)


def test_a_second_writer_of_one_index_is_refused_while_the_first_runs(tmp_path: Path) -> None:
    solid_images(tmp_path / "imgs", 12)
    embedding, release = threading.Event(), threading.Event()

    class Paused(FakeRetriever):
        def encode_target(self, images):
            embedding.set()
            release.wait()
            return super().encode_target(images)

    with ThreadPoolExecutor(1) as pool:
        first = pool.submit(build_index, Paused(), tmp_path / "imgs", tmp_path / "idx", FAST)
        try:
            assert embedding.wait(120), first.exception(0)
            busy = f"another index build is writing to {tmp_path / 'idx'}"
            with pytest.raises(OSError, match=busy):
                build_index(FakeRetriever(), tmp_path / "imgs", tmp_path / "idx", FAST)
            with pytest.raises(OSError, match=busy):
                remove_images(tmp_path / "idx", ids=[0])
        finally:
            release.set()
        assert first.result().count == 12
    assert remove_images(tmp_path / "idx", ids=[0]).count == 11  # the lock is free again


def test_the_index_folder_and_files_get_the_usual_modes(tmp_path: Path) -> None:
    solid_images(tmp_path / "imgs", 3)
    previous = os.umask(0o022)
    try:
        build_index(FakeRetriever(), tmp_path / "imgs", tmp_path / "idx", FAST)
    finally:
        os.umask(previous)
    assert stat.S_IMODE((tmp_path / "idx").stat().st_mode) == 0o755
    modes = {stat.S_IMODE(path.stat().st_mode) for path in (tmp_path / "idx").iterdir()}
    assert modes == {0o644}


def test_a_registered_name_with_random_weights_is_refused(tmp_path: Path) -> None:
    solid_images(tmp_path / "imgs", 2)
    with pytest.raises(GalleryIndexError, match="checkpoint folder"):
        build_index(FakeRetriever(), tmp_path / "imgs", tmp_path / "idx", FAST, "instructcir-tiny")
    assert not (tmp_path / "idx").exists()


def test_name_at_dir_is_indexed_only_if_it_rebuilds_the_model(tmp_path: Path) -> None:
    solid_images(tmp_path / "imgs", 2)
    clip = _hf_backbone(tmp_path / "clip")
    random_head = f"instructcir-tiny@{clip}"  # its cross-attention starts at random
    model = resolve_model(random_head)
    with pytest.raises(GalleryIndexError, match="does not rebuild the model being indexed"):
        build_index(model, tmp_path / "imgs", tmp_path / "x", FAST, random_head)
    assert not (tmp_path / "x").exists()
    spec = f"sum-tiny@{clip}"
    manifest = build_index(resolve_model(spec), tmp_path / "imgs", tmp_path / "idx", FAST, spec)
    assert manifest.count == 2
    GalleryIndex.open(tmp_path / "idx").check_model(resolve_model(manifest.model.spec))
