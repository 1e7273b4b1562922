"""End-to-end generation runs in-process: samplers × captioners × writers, cache, report, CLI."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from opencir.cli import main
from opencir.data.collections import CollectionSpec
from opencir.data.triplets import open_triplets, read_triplets
from opencir.generate import (
    CaptionerConfig,
    EndpointConfig,
    GenerateConfig,
    SamplerConfig,
    WriterConfig,
    generate,
)
from tests import generate_fixtures
from tests.fake_llm_server import FakeLLMServer
from tests.generate_fixtures import make_shard, make_world, png_bytes, shape_image


@pytest.fixture
def server() -> Iterator[FakeLLMServer]:
    with FakeLLMServer() as fake:
        yield fake


@pytest.fixture
def world(tmp_path: Path) -> Path:
    return make_world(tmp_path / "world", n_train=8, n_test=2, corrupt=1)


def _endpoint(server: FakeLLMServer, **overrides) -> EndpointConfig:
    return EndpointConfig(
        **(
            {
                "model": "fake",
                "base_url": server.url,
                "backoff_s": 0.01,
                "timeout_s": 2.0,
                "max_retries": 1,
            }
            | overrides
        )
    )


def _config(world: Path, out: Path, **overrides) -> GenerateConfig:
    settings = {
        "source": CollectionSpec(str(world), where=(("split", "train"),)),
        "out": str(out),
        "pairs": 12,
        "shard_size": 5,
        "progress": False,
    } | overrides
    return GenerateConfig(**settings)


def _model_stages(server: FakeLLMServer) -> dict:
    return {
        "captioner": CaptionerConfig(kind="openai", endpoint=_endpoint(server)),
        "writer": WriterConfig(kind="llm", endpoint=_endpoint(server)),
    }


def _texts(out: Path) -> list[tuple[str, str, str]]:
    return [(t.reference, t.target, t.text) for t in read_triplets(out)]


def test_sidecar_template_on_a_world(world: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    report = generate(_config(world, out))
    triplets = read_triplets(out)
    failures = [json.loads(line) for line in (out / "failures.jsonl").read_text().splitlines()]
    assert report.pairs == 12 == len(triplets) + len(failures)
    assert {f["reason"] for f in failures} == {"image_not_an_image"}
    assert all("img000" in (f["reference"], f["target"]) for f in failures)
    assert report.image_failures == {"not_an_image": 1}
    test_ids = {"img008", "img009"}
    for t in triplets:
        assert {t.reference, t.target}.isdisjoint(test_ids | {"img000"})
        assert 1 <= len(t.text.split()) <= 12
        assert t.provenance["writer"]["kind"] == "template"
        assert (
            t.provenance["sampler"] == {"kind": "random"} and t.provenance["strategy"] == "random"
        )
        assert t.provenance["seed"] == 0 and t.extra["strategy"] == "random"
        assert t.extra["reference_caption"].startswith("a ")
    assert len({t.id for t in triplets}) == len(triplets)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["source"]["where"] == [["split", "train"]]
    rows, load = open_triplets([out / "triplets.jsonl"])
    assert load(rows[0].reference).size == (32, 32)
    saved = json.loads((out / "report.json").read_text())
    assert saved["triplets"] == len(triplets) and saved["failed"] == {
        "image_not_an_image": len(failures)
    }
    assert "in_flight" not in saved["run"]  # no model client


def test_llm_writer_with_model_captions_and_the_cache(
    world: Path, tmp_path: Path, server: FakeLLMServer
) -> None:
    out = tmp_path / "out"
    report = generate(_config(world, out, **_model_stages(server)))
    assert report.triplets == len(read_triplets(out)) > 0
    captions = server.count("caption")
    assert captions == 7  # each loadable train image once, whatever the number of pairs
    change_prompts = [
        r["body"]["messages"][0]["content"]
        for r in server.requests
        if isinstance(r["body"]["messages"][0]["content"], str)
    ]
    assert all(p.startswith("You have two captions") and "Difference:" in p for p in change_prompts)
    for t in read_triplets(out):
        colour = t.extra["target_caption"].split()[1]
        assert t.text == f"make it {colour}"
        assert (
            t.provenance["captioner"]["model"] == "fake" and t.provenance["writer"]["kind"] == "llm"
        )
        assert len(t.provenance["writer"]["prompt_sha"]) == 12
    assert report.usage["change"]["requests"] == report.triplets
    assert report.to_dict()["per_triplet"]["prompt_tokens"] > 0
    # a rerun of a finished folder, and a new folder sharing the cache, pay for nothing
    before = server.count()
    assert generate(_config(world, out, **_model_stages(server))).triplets == report.triplets
    other = tmp_path / "other"
    shared = _config(world, other, cache_dir=str(out / "cache"), **_model_stages(server))
    again = generate(shared)
    assert server.count() == before
    assert _texts(other) == _texts(out) and again.cache["changes_cached"] == report.triplets


def test_pair_vlm_sends_both_images_and_no_captions(
    world: Path, tmp_path: Path, server: FakeLLMServer
) -> None:
    config = _config(
        world,
        tmp_path / "out",
        writer=WriterConfig(kind="pair-vlm", endpoint=_endpoint(server)),
        captioner=CaptionerConfig(kind="none"),
    )
    report = generate(config)
    assert report.triplets > 0 and server.count("caption") == 0
    assert server.count("pair") == report.triplets
    content = server.requests[0]["body"]["messages"][0]["content"]
    assert [p["type"] for p in content] == ["image_url", "image_url", "text"]
    for t in read_triplets(tmp_path / "out"):
        assert t.text.startswith("make it ") and "reference_caption" not in t.extra


def test_failures_and_rejections_are_recorded(
    world: Path, tmp_path: Path, server: FakeLLMServer
) -> None:
    server.always("text:Image A has a red circle while image B has a blue one")
    stages = {"writer": WriterConfig(kind="llm", endpoint=_endpoint(server), reject_retries=1)}
    report = generate(_config(world, tmp_path / "a", **stages))
    assert report.triplets == 0 and set(report.rejected) == {"describes_both"}
    assert report.usage["change"]["requests"] == 2 * report.rejected["describes_both"]
    server.always("500")
    report = generate(_config(world, tmp_path / "b", **stages))
    assert report.triplets == 0 and set(report.failed) == {"server_error", "image_not_an_image"}
    failures = [json.loads(x) for x in (tmp_path / "b" / "failures.jsonl").read_text().splitlines()]
    assert {f["stage"] for f in failures} == {"load", "change"}
    server.always(None)
    # a stall never answers; the timeout leaves a loaded machine time for the answered requests
    server.queue(*["stall"] * 4)
    stalled = _config(
        world,
        tmp_path / "c",
        writer=WriterConfig(
            kind="llm", endpoint=_endpoint(server, timeout_s=1.5, max_retries=0, concurrency=4)
        ),
    )
    report = generate(stalled)
    assert report.failed.get("timeout") == 4
    in_flight = report.run["in_flight"]["change"]
    assert in_flight["bound"] == 4 and in_flight["cuts"] >= 1 and in_flight["lowest"] <= 2
    assert "change requests in flight: at most" in report.summary()
    saved = json.loads((tmp_path / "c" / "report.json").read_text())
    assert saved["run"]["in_flight"] == report.run["in_flight"]
    assert report.pairs == report.triplets + sum(report.failed.values()) + sum(
        report.rejected.values()
    )


def test_parquet_output_and_growing_pairs(
    world: Path, tmp_path: Path, server: FakeLLMServer
) -> None:
    pytest.importorskip("pyarrow")
    out = tmp_path / "out"
    generate(_config(world, out, pairs=10, format="parquet", **_model_stages(server)))
    small = _texts(out)
    assert (out / "triplets.parquet").exists() and not (out / "triplets.jsonl").exists()
    before = server.count("change")
    generate(_config(world, out, pairs=15, format="parquet", **_model_stages(server)))
    assert _texts(out)[: len(small)] == small
    assert server.count("change") - before <= 5  # the first two shards were reused


def test_a_different_run_in_the_same_folder_is_refused(world: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="the llm writer reads captions"):
        _config(
            world,
            tmp_path,
            captioner=CaptionerConfig(kind="none"),
            writer=WriterConfig(kind="llm", endpoint=EndpointConfig(model="m")),
        )
    out = tmp_path / "out"
    generate(_config(world, out))
    with pytest.raises(ValueError, match="different source or settings"):
        generate(_config(world, out, seed=1))
    with pytest.raises(ValueError, match="different source or settings"):
        generate(_config(world, out, source=CollectionSpec(str(world))))


def test_class_sampler_on_a_folder_and_webdataset_source(tmp_path: Path) -> None:
    for cls in ("dogs", "cats"):
        for i, colour in enumerate(("red", "blue", "green")):
            (tmp_path / "photos" / cls).mkdir(parents=True, exist_ok=True)
            shape_image(colour, "circle").save(tmp_path / "photos" / cls / f"{i}.png")
            (tmp_path / "photos" / cls / f"{i}.txt").write_text(f"a {colour} {cls[:-1]}")
    config = GenerateConfig(
        source=CollectionSpec(str(tmp_path / "photos")),
        out=str(tmp_path / "o1"),
        pairs=6,
        sampler=SamplerConfig(kind="class"),
        progress=False,
    )
    assert generate(config).triplets == 6
    for t in read_triplets(tmp_path / "o1"):
        assert t.reference.split("/")[0] == t.target.split("/")[0]
        assert t.extra["strategy"] in ("class:dogs", "class:cats")
    members = {}
    for i, colour in enumerate(("red", "blue", "green", "yellow")):
        members[f"{i:04d}.png"] = png_bytes(shape_image(colour, "square"))
        members[f"{i:04d}.txt"] = f"a {colour} square".encode()
    make_shard(tmp_path / "shards" / "000.tar", members)
    config = replace(
        config,
        source=CollectionSpec(str(tmp_path / "shards")),
        out=str(tmp_path / "o2"),
        sampler=SamplerConfig(),
    )
    assert generate(config).triplets == 6
    assert {t.reference for t in read_triplets(tmp_path / "o2")} <= {"0000", "0001", "0002", "0003"}


def test_a_fifo_and_a_non_utf8_name_in_the_folder_are_skipped(tmp_path: Path, caplog) -> None:
    photos = tmp_path / "photos"
    photos.mkdir()
    for colour in ("red", "blue", "green", "yellow"):
        shape_image(colour, "circle").save(photos / f"{colour}.png")
        (photos / f"{colour}.txt").write_text(f"a {colour} circle")
    (photos / generate_fixtures.NON_UTF8_NAME).write_bytes((photos / "red.png").read_bytes())
    argv = ["generate", "--images", str(photos), "--out", str(tmp_path / "out"), "--pairs", "6"]
    with generate_fixtures.fifo(photos / "stuck.png"):
        assert main([*argv, "--captioner", "sidecar", "--writer", "template", "--no-progress"]) == 0
    keys = {t.reference for t in read_triplets(tmp_path / "out")}
    keys |= {t.target for t in read_triplets(tmp_path / "out")}
    assert keys == {"red.png", "blue.png", "green.png", "yellow.png"}
    assert (tmp_path / "out" / "failures.jsonl").read_text() == ""
    assert "stuck.png: not a regular file" in caplog.text and "bad\\xff.png" in caplog.text


def test_related_sampler_from_npz_and_from_a_model(world: Path, tmp_path: Path) -> None:
    keys = [f"img{i:03d}" for i in range(10)]
    vectors = np.eye(10)[:, :4] + 0.5  # four groups of near neighbours
    vectors[:, :4] += np.random.default_rng(0).normal(scale=0.05, size=(10, 4))
    np.savez(tmp_path / "emb.npz", keys=np.array(keys), vectors=vectors)
    sampler = SamplerConfig(
        kind="related", embeddings=str(tmp_path / "emb.npz"), k=3, max_distance=1.0
    )
    report = generate(_config(world, tmp_path / "a", pairs=6, sampler=sampler))
    triplets = read_triplets(tmp_path / "a")
    assert report.pairs == 6
    assert all(
        t.provenance["strategy"] == "related" and t.provenance["pair_score"] > 0 for t in triplets
    )
    model_sampler = SamplerConfig(
        kind="related", embed_model="image-only-tiny", k=3, min_distance=0.0, max_distance=2.0
    )
    report = generate(_config(world, tmp_path / "b", pairs=6, sampler=model_sampler))
    assert report.image_failures == {"not_an_image": 1} and report.pairs == 6
    assert list((tmp_path / "b" / "cache").glob("embeddings-*.npz"))
    with pytest.raises(ValueError, match="needs --embeddings"):
        generate(_config(world, tmp_path / "c", sampler=SamplerConfig(kind="related")))


def test_cli_generate(world: Path, tmp_path: Path, server: FakeLLMServer, capsys, caplog) -> None:
    out = tmp_path / "cli"
    argv = [
        "generate",
        "--images",
        str(world),
        "--where",
        "split=train",
        "--out",
        str(out),
        "--pairs",
        "8",
        "--shard-size",
        "3",
        "--captioner",
        "sidecar",
        "--writer",
        "llm",
        "--writer-model",
        "fake",
        "--endpoint",
        server.url,
        "--no-progress",
        "--seed",
        "5",
    ]
    assert main(argv) == 0
    assert "triplets from 8 pairs" in capsys.readouterr().out
    assert all(t.provenance["seed"] == 5 for t in read_triplets(out))
    assert (
        main(
            [
                "generate",
                "--images",
                str(world),
                "--out",
                str(tmp_path / "x"),
                "--pairs",
                "3",
                "--writer",
                "llm",
            ]
        )
        == 2
    )
    assert "needs a model name" in caplog.text
    prompt = tmp_path / "prompt.txt"
    prompt.write_text("A: {caption_a}\nB: {caption_b}\nchange:")
    argv2 = [*argv[:6], str(tmp_path / "cli2"), *argv[7:], "--writer-prompt", f"@{prompt}"]
    assert main(argv2) == 0
    assert server.requests[-1]["body"]["messages"][0]["content"].startswith("A: a ")
