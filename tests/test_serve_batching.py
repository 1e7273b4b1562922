"""Concurrent queries are micro-batched: answers as if alone, failures isolated, no stalls."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image

import opencir
from opencir.index import GalleryIndex, Searcher
from opencir.serve import ServeConfig, create_app, start_in_thread
from opencir.serve.batching import PreparedQuery, QueryBatcher
from opencir.serve.runner import bind
from tests.test_serve_support import build_tiny_index

TEXTS = ("bigger", "make it red", "a blue square on the left", "remove it")


class GatedModel:
    """The real model, but ``encode_query`` can be held shut and records its batch sizes."""

    def __init__(self, model: Any) -> None:
        self.model = model
        self.open = threading.Event()
        self.open.set()
        self.entered = threading.Event()
        self.batches: list[int] = []
        self.threads: list[int] = []

    def encode_query(self, images: Any, texts: list[str]) -> Any:
        self.batches.append(len(texts))
        self.threads.append(threading.get_ident())
        self.entered.set()
        assert self.open.wait(10), "the gate was never opened"
        if any("boom" in text for text in texts):
            raise ValueError("this query breaks the model")
        return self.model.encode_query(images, texts)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.model, name)


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, list[Path]]:
    return build_tiny_index(tmp_path_factory.mktemp("batching"))


@pytest.fixture
def gated(built: tuple[Path, Path, list[Path]]) -> Iterator[tuple[Searcher, GatedModel]]:
    index, checkpoint, _ = built
    model = GatedModel(opencir.load(checkpoint))
    searcher = Searcher(GalleryIndex.open(index), model)
    yield searcher, model
    model.open.set()
    searcher.close()


def _wait_for(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition never became true"
        time.sleep(0.01)


def _image(path: Path) -> Image.Image:
    return Image.open(path).convert("RGB")


def _ids_scores(hits: list) -> tuple[list[int], np.ndarray]:
    return [h.item.id for h in hits], np.array([h.score for h in hits])


def test_queued_queries_run_as_one_batch_with_single_query_answers(
    gated: tuple[Searcher, GatedModel], built: tuple[Path, Path, list[Path]]
) -> None:
    searcher, model = gated
    paths = built[2]
    queries = [
        PreparedQuery(_image(paths[i]), TEXTS[i % 4], k=3 + i % 4, exclude=frozenset({i}))
        for i in range(6)
    ]
    expected = [searcher.search(q.text, image=q.image, k=q.k + 1).hits for q in queries]
    model.batches.clear()
    model.entered.clear()
    batcher = QueryBatcher(searcher, max_batch=16)
    model.open.clear()
    with ThreadPoolExecutor(6) as pool:
        first = pool.submit(batcher.answer, queries[0])
        assert model.entered.wait(5)  # query 0's own thread leads, held inside the model
        rest = [pool.submit(batcher.answer, q) for q in queries[1:]]
        _wait_for(lambda: batcher.queued == 5)
        model.open.set()
        answers = [first.result(10)] + [f.result(10) for f in rest]
    assert model.batches == [1, 5] and batcher.batch_sizes == [1, 5]
    for query, answer, alone in zip(queries, answers, expected, strict=True):
        ids, scores = _ids_scores(answer.hits)
        want = [h for h in alone if h.item.id not in query.exclude][: query.k]
        want_ids, want_scores = _ids_scores(want)
        assert ids == want_ids and len(ids) == query.k
        np.testing.assert_allclose(scores, want_scores, atol=1e-5)


def test_a_lone_query_runs_in_its_own_thread_at_once(
    gated: tuple[Searcher, GatedModel], built: tuple[Path, Path, list[Path]]
) -> None:
    searcher, model = gated
    batcher = QueryBatcher(searcher)
    answer = batcher.answer(PreparedQuery(_image(built[2][3]), "bigger", k=4))
    assert len(answer.hits) == 4 and answer.timings_ms["batch"] == 1
    assert model.threads == [threading.get_ident()]  # no hand-off to another thread
    assert batcher.queued == 0


def test_a_failing_query_does_not_fail_its_batch(
    gated: tuple[Searcher, GatedModel], built: tuple[Path, Path, list[Path]]
) -> None:
    searcher, model = gated
    image = _image(built[2][0])
    batcher = QueryBatcher(searcher)
    model.open.clear()
    with ThreadPoolExecutor(4) as pool:
        first = pool.submit(batcher.answer, PreparedQuery(image, "warm", k=2))
        assert model.entered.wait(5)
        texts = ("red", "blue", "boom")
        futures = [pool.submit(batcher.answer, PreparedQuery(image, t, k=2)) for t in texts]
        _wait_for(lambda: batcher.queued == 3)
        model.open.set()
        assert first.result(10).hits
        assert all(len(f.result(10).hits) == 2 for f in futures[:2])
        with pytest.raises(ValueError, match="breaks the model"):
            futures[2].result(10)
    assert model.batches[:2] == [1, 3]  # the failed batch of 3, then each query alone
    assert sorted(model.batches[2:]) == [1, 1, 1]


def test_http_results_under_load_equal_sequential_ones(
    built: tuple[Path, Path, list[Path]],
) -> None:
    index, _, paths = built
    upload = paths[5].read_bytes()
    forms = [{"text": TEXTS[i % 4], "k": str(2 + i % 5), "id": str(i % 15)} for i in range(12)]
    forms += [{"text": TEXTS[i % 4], "k": str(3 + i % 3)} for i in range(12)]

    def post(client: httpx.Client, form: dict) -> tuple[list[int], list[float], float]:
        files = None if "id" in form else {"image": ("q.png", upload, "image/png")}
        response = client.post("/search", data=form, files=files)
        assert response.status_code == 200, response.text
        body = response.json()
        return (
            [r["id"] for r in body["results"]],
            [r["score"] for r in body["results"]],
            body["timings_ms"]["batch"],
        )

    app = create_app(ServeConfig(index=str(index)))
    with start_in_thread(app) as server, httpx.Client(base_url=server.url, timeout=30) as client:
        while client.get("/readyz").status_code != 200:
            threading.Event().wait(0.05)
        sequential = [post(client, form) for form in forms]

        def concurrent(form: dict) -> tuple[list[int], list[float], float]:
            with httpx.Client(base_url=server.url, timeout=30) as own:
                return post(own, form)

        with ThreadPoolExecutor(16) as pool:
            loaded = list(pool.map(concurrent, forms * 2))
    assert all(batch == 1 for _, _, batch in sequential)
    for (ids, scores, _), (want_ids, want_scores, _) in zip(loaded, sequential * 2, strict=True):
        assert ids == want_ids
        np.testing.assert_allclose(scores, want_scores, atol=1e-5)


def test_event_loop_answers_while_the_model_is_busy(
    gated: tuple[Searcher, GatedModel], built: tuple[Path, Path, list[Path]]
) -> None:
    searcher, model = gated
    app = create_app(ServeConfig(), searcher)
    with start_in_thread(app) as server, httpx.Client(base_url=server.url, timeout=10) as client:
        model.open.clear()
        model.entered.clear()
        with ThreadPoolExecutor(1) as pool:
            pending = pool.submit(client.post, "/search", data={"text": "red", "id": "1", "k": "2"})
            assert model.entered.wait(5)
            with httpx.Client(base_url=server.url, timeout=5) as other:
                assert other.get("/healthz").status_code == 200  # model busy, loop free
                assert other.get("/gallery?limit=2").status_code == 200
            assert not pending.done()
            model.open.set()
            assert pending.result(10).status_code == 200


def test_served_connections_turn_nagle_off() -> None:
    listener = bind("127.0.0.1", 0)
    seen: dict[str, int] = {}

    async def serve() -> None:
        def accepted(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            sock = writer.get_extra_info("socket")
            seen["nodelay"] = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
            writer.close()

        server = await asyncio.start_server(accepted, sock=listener)
        port = listener.getsockname()[1]
        _, writer = await asyncio.open_connection("127.0.0.1", port)
        for _ in range(100):
            if "nodelay" in seen:
                break
            await asyncio.sleep(0.01)
        writer.close()
        server.close()

    asyncio.run(serve())
    assert listener.proto == socket.IPPROTO_TCP
    assert seen["nodelay"] != 0  # else every keep-alive response waits for a delayed ACK
