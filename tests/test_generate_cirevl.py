"""The training-free CIReVL baseline: caption → rewrite → text retrieval, evaluable like a model."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from PIL import Image

from opencir.eval.benchmark import BenchmarkSplit, CIRQuery
from opencir.eval.evaluate import evaluate
from opencir.generate import CIReVL, EndpointConfig, load_cirevl
from opencir.generate.captioners import OpenAICaptioner
from opencir.generate.cirevl import CIReVLConfig, run_sync
from opencir.generate.client import ChatClient
from opencir.models import create_model
from tests.fake_llm_server import FakeLLMServer
from tests.generate_fixtures import COLOURS


@pytest.fixture
def server() -> Iterator[FakeLLMServer]:
    with FakeLLMServer() as fake:
        yield fake


def _retriever(server: FakeLLMServer) -> CIReVL:
    endpoint = EndpointConfig(model="fake", base_url=server.url, backoff_s=0.01, max_retries=1)
    return CIReVL(create_model("text-only-tiny"), OpenAICaptioner(endpoint), ChatClient(endpoint))


def _image(colour: str) -> Image.Image:
    return Image.new("RGB", (24, 24), COLOURS[colour])


def test_rewrites_then_embeds_the_new_description(server: FakeLLMServer) -> None:
    retriever = _retriever(server)
    images = [_image("red"), _image("blue")]
    texts = ["make it green", "make it yellow"]
    assert retriever.rewritten(images, texts) == ["a green picture", "a yellow picture"]
    query = retriever.encode_query(images, texts)
    target = retriever.encode_target(images)
    assert query.shape == target.shape == (2, retriever.tower.embed_dim)
    assert torch.allclose(query.norm(dim=-1), torch.ones(2), atol=1e-5)
    assert torch.allclose(
        query, retriever.encode_text(["a green picture", "a yellow picture"]), atol=1e-6
    )
    asked = server.count()
    retriever.encode_query(images, texts)  # captions and rewrites come from the cache
    assert server.count() == asked == 4
    with pytest.raises(ValueError, match="one text per image"):
        retriever.encode_query(images, ["only one"])


def test_failed_rewrites_fall_back_and_running_loops_are_fine(server: FakeLLMServer) -> None:
    retriever = _retriever(server)
    server.always("500")
    assert retriever.rewritten([_image("red")], ["make it blue"]) == ["make it blue"]
    server.always(None)

    async def inside_a_loop() -> list[str]:
        return retriever.rewritten([_image("red")], ["make it blue"])

    assert asyncio.run(inside_a_loop()) == ["a blue picture"]
    assert run_sync(asyncio.sleep(0, result=3)) == 3


def test_evaluable_by_the_evaluator(server: FakeLLMServer) -> None:
    names = list(COLOURS)
    split = BenchmarkSplit(
        benchmark="toy",
        split="val",
        gallery=names,
        queries=[
            CIRQuery(f"q{i}", names[i], f"make it {names[(i + 1) % 4]}", (names[(i + 1) % 4],))
            for i in range(4)
        ],
        load_image=_image,
        protocol={"reference": "kept"},
        ks=(1, 2),
    )
    result = evaluate(_retriever(server), split, batch_size=2, progress=False)
    assert set(result.metrics) == {"R@1", "R@2"} and result.num_queries == 4


def test_from_a_json_config(server: FakeLLMServer, tmp_path: Path) -> None:
    endpoint = {"model": "fake", "base_url": server.url}
    config = {
        "model": "text-only-tiny",
        "captioner": {"kind": "openai", "endpoint": endpoint},
        "rewriter": endpoint,
        "cache_dir": str(tmp_path / "cache"),
    }
    (tmp_path / "cirevl.json").write_text(json.dumps(config))
    retriever = load_cirevl(tmp_path / "cirevl.json")
    assert retriever.rewritten([_image("red")], ["make it green"]) == ["a green picture"]
    assert len(retriever.fingerprint()) == 12
    asked = server.count()
    # a new retriever on the same cache folder (another run) asks the server nothing
    again = load_cirevl(tmp_path / "cirevl.json")
    assert again.rewritten([_image("red")], ["make it green"]) == ["a green picture"]
    assert server.count() == asked
    (tmp_path / "bad.json").write_text(json.dumps({"model": "text-only-tiny"}))
    with pytest.raises(ValueError, match="bad CIReVL config"):
        load_cirevl(tmp_path / "bad.json")


def _manifest(tmp_path: Path, captions: dict[str, str]) -> Path:
    """A collection manifest: one solid-colour PNG per colour, captioned in ``alt_text``."""
    (tmp_path / "images").mkdir(parents=True)
    rows = []
    for colour, caption in captions.items():
        _image(colour).save(tmp_path / "images" / f"{colour}.png")
        rows.append({"id": colour, "file": f"images/{colour}.png", "alt_text": caption})
    path = tmp_path / "images.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def test_sidecar_captions_are_found_by_image_content(
    server: FakeLLMServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    manifest = _manifest(tmp_path, {"red": "a big red square", "blue": "a small blue circle"})
    config = {
        "model": "text-only-tiny",
        "captioner": {"kind": "sidecar", "field": "alt_text"},
        "rewriter": {"model": "fake", "base_url": server.url, "max_retries": 0},
        "sidecar": str(manifest),
        "cache_dir": str(tmp_path / "cache"),
    }
    (tmp_path / "cirevl.json").write_text(json.dumps(config))
    retriever = load_cirevl(tmp_path / "cirevl.json", progress=False)
    images = [_image("blue"), _image("red").convert("RGBA"), _image("green")]
    texts = ["make it yellow", "make it green", "make it red"]
    # the reference's own caption, rewritten; green is not in the collection: no caption, so
    # the query falls back to its modification text
    assert retriever.rewritten(images, texts) == [
        "a small yellow circle",
        "a big green square",
        "make it red",
    ]
    assert server.count() == 3  # rewrites only: sidecar captions cost no request
    assert "sidecar captions" not in capsys.readouterr().err  # no indexing bar when asked
    asked = [r["body"]["messages"][-1]["content"] for r in server.requests]
    assert any("Image description: a small blue circle" in str(text) for text in asked)
    other = {**config, "sidecar": str(_manifest(tmp_path / "other", {"red": "a red disc"}))}
    assert CIReVL.from_config(CIReVLConfig.from_dict(other)).fingerprint() != (
        retriever.fingerprint()
    )
    with pytest.raises(ValueError, match="sidecar captioner needs 'sidecar'"):
        CIReVLConfig.from_dict({k: v for k, v in config.items() if k != "sidecar"})
