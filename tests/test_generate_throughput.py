"""The pipeline keeps the server busy: requests in flight across shards, no stalls, no pixels.

These count what the server sees (most requests in flight at once, requests during a commit);
none of them times anything. The throughput figures are in ``benchmarks/generate_throughput.py``.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from opencir.data.collections import CollectionSpec
from opencir.generate import (
    CaptionerConfig,
    EndpointConfig,
    GenerateConfig,
    WriterConfig,
    generate,
)
from opencir.generate.shards import ShardStore
from opencir.generate.stages import Stages
from tests.fake_llm_server import FakeLLMServer
from tests.generate_fixtures import make_world


@pytest.fixture(autouse=True)
def _deep_accept_queue(monkeypatch: pytest.MonkeyPatch) -> None:
    # The stdlib server's listen backlog is 5: 64 simultaneous connects would be dropped and
    # retried a second later, and the test would measure the fake server, not the pipeline.
    monkeypatch.setattr(ThreadingHTTPServer, "request_queue_size", 256)


@pytest.fixture
def slow_server() -> Iterator[FakeLLMServer]:
    with FakeLLMServer(delay_s=0.6) as fake:  # long enough to fill every slot on a busy CPU
        yield fake


@pytest.fixture
def world(tmp_path: Path) -> Path:
    return make_world(tmp_path / "world", n_train=16, n_test=0, corrupt=1)


def _config(world: Path, out: Path, endpoint: EndpointConfig | None, **overrides: Any):
    writer = WriterConfig(kind="llm", endpoint=endpoint) if endpoint else WriterConfig("template")
    settings: dict[str, Any] = {
        "source": CollectionSpec(str(world)),
        "out": str(out),
        "pairs": 60,
        "captioner": CaptionerConfig(kind="sidecar"),
        "writer": writer,
        "progress": False,
    }
    return GenerateConfig(**(settings | overrides))


def _endpoint(server: FakeLLMServer, **overrides: Any) -> EndpointConfig:
    return EndpointConfig(model="fake", base_url=server.url, timeout_s=10, **overrides)


def test_small_shards_still_fill_every_request_slot(
    world: Path, tmp_path: Path, slow_server: FakeLLMServer
) -> None:
    # 3-pair shards and 12 request slots: two shards in flight could only ever send 6.
    config = _config(world, tmp_path / "out", _endpoint(slow_server, concurrency=12), shard_size=3)
    report = generate(config)
    assert report.pairs == 60 and report.triplets > 0
    assert slow_server.max_inflight == 12


def test_default_concurrency_keeps_64_requests_in_flight(
    world: Path, tmp_path: Path, slow_server: FakeLLMServer
) -> None:
    endpoint = _endpoint(slow_server)
    assert endpoint.concurrency == 64
    report = generate(_config(world, tmp_path / "out", endpoint, pairs=100))
    assert report.pairs == 100
    assert slow_server.max_inflight == 64


def test_requests_keep_flowing_while_a_shard_is_committed(
    world: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: dict[str, int] = {}
    original = ShardStore.commit

    def slow_commit(store: ShardStore, index: int, digest: str, records: Any) -> None:
        if index == 0:  # hold the first commit until the server has answered 3 more requests
            before = server.count()
            deadline = time.monotonic() + 5
            while server.count() < before + 3 and time.monotonic() < deadline:
                time.sleep(0.01)
            seen["during_commit"] = server.count() - before
        original(store, index, digest, records)

    monkeypatch.setattr(ShardStore, "commit", slow_commit)
    with FakeLLMServer(delay_s=0.02) as server:
        endpoint = _endpoint(server, concurrency=4)
        report = generate(_config(world, tmp_path / "out", endpoint, shard_size=4, pairs=40))
    assert report.pairs == 40
    assert seen["during_commit"] >= 3  # a commit on the event loop would have frozen them all


def test_verified_images_are_not_held_when_no_stage_reads_pixels(world: Path, tmp_path: Path):
    keys = ["img000", "img001", "img002"]
    text_only = Stages(_config(world, tmp_path / "a", None))
    jobs = asyncio.run(text_only.load_images(keys))
    assert jobs["img000"].error == "not_an_image"  # still verified
    assert jobs["img001"].sha and jobs["img001"].image is None
    with FakeLLMServer() as server:
        pair_vlm = WriterConfig(kind="pair-vlm", endpoint=_endpoint(server))
        with_pixels = Stages(_config(world, tmp_path / "b", None, writer=pair_vlm))
        jobs = asyncio.run(with_pixels.load_images(keys))
    assert jobs["img001"].image is not None and jobs["img001"].image.size == (32, 32)


def test_inflight_shards_follow_the_concurrency(world: Path, tmp_path: Path) -> None:
    with FakeLLMServer() as server:
        wide = Stages(_config(world, tmp_path / "a", _endpoint(server, concurrency=256)))
        narrow = Stages(_config(world, tmp_path / "b", _endpoint(server, concurrency=4)))
    assert wide.inflight_shards() == 3  # 2 x 256 pairs in 256-pair shards, plus one
    assert narrow.inflight_shards() == 2  # the configured floor
    assert Stages(_config(world, tmp_path / "c", None)).inflight_shards() == 2


@pytest.mark.parametrize("stage", ["captioner", "pair-vlm"])
def test_images_are_encoded_off_the_event_loop(
    world: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, stage: str
) -> None:
    from opencir.generate import captioners, writers

    module = captioners if stage == "captioner" else writers
    threads: list[int] = []
    original = module.user_content

    def recording(*args: Any, **kwargs: Any) -> Any:
        threads.append(threading.get_ident())
        return original(*args, **kwargs)

    monkeypatch.setattr(module, "user_content", recording)
    with FakeLLMServer() as server:
        endpoint = _endpoint(server, concurrency=8)
        if stage == "captioner":
            stages = {"captioner": CaptionerConfig(kind="openai", endpoint=endpoint)}
            stages["writer"] = WriterConfig(kind="llm", endpoint=endpoint)
        else:
            stages = {"writer": WriterConfig(kind="pair-vlm", endpoint=endpoint)}
        report = generate(_config(world, tmp_path / "out", None, pairs=10, **stages))
    assert report.triplets > 0 and threads
    assert threading.get_ident() not in threads  # the loop runs here; JPEG encoding did not
