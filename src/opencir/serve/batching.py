"""Micro-batching of concurrent queries: one model call and one FAISS search per batch.

The model and its tokenizer are not safe to call from several threads at once, so model work
runs on one worker thread. Rather than serialising queries one by one behind a lock, the
worker takes every query that arrived while the previous batch ran (up to ``max_batch``) and
encodes them together: on a CPU one batched forward pass and one batched exact search (a
matrix product over the gallery) cost little more than a single query. Under no load a batch
is one query and nothing waits, so a lone request pays no batching delay.

Request handlers await the result without blocking the event loop; decoding uploads and
loading gallery images stay in the request threads, in parallel with the model.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
import time
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image

from opencir.index.search import Searcher
from opencir.index.store import Hit

log = logging.getLogger(__name__)

DEFAULT_MAX_BATCH = 16


@dataclass(frozen=True)
class PreparedQuery:
    """One composed query, validated: reference pixels, cleaned text, k, ids to leave out."""

    image: Image.Image
    text: str
    k: int
    exclude: frozenset[int] = frozenset()


@dataclass(frozen=True)
class Answer:
    """Hits of one query, whether its text was cut to the token window, and where time went."""

    hits: list[Hit]
    text_truncated: bool
    timings_ms: dict[str, float] = field(default_factory=dict)


@dataclass
class _Job:
    query: PreparedQuery
    future: Future[Answer]


class QueryBatcher:
    """Encodes and searches queued queries in batches on one worker thread."""

    def __init__(self, searcher: Searcher, max_batch: int = DEFAULT_MAX_BATCH) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, got {max_batch}")
        self.searcher, self.max_batch = searcher, max_batch
        self.batch_sizes: list[int] = []  # every batch run, for tests and load reports
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._work, name="opencir-batcher", daemon=True)
        self._thread.start()

    def submit(self, query: PreparedQuery) -> Future[Answer]:
        """Queue ``query``; the future resolves to its :class:`Answer` (or its exception)."""
        future: Future[Answer] = Future()
        self._jobs.put(_Job(query, future))
        return future

    async def search(self, query: PreparedQuery) -> Answer:
        """Await one query's answer without blocking the event loop."""
        return await asyncio.wrap_future(self.submit(query))

    def close(self, timeout: float = 10.0) -> None:
        self._jobs.put(None)
        self._thread.join(timeout)

    def _work(self) -> None:
        while True:
            first = self._jobs.get()
            if first is None:
                return
            batch, stop = self._drain(first)
            self._run(batch)
            if stop:
                return

    def _drain(self, first: _Job) -> tuple[list[_Job], bool]:
        """``first`` plus whatever is already queued, up to ``max_batch`` (never waits)."""
        batch = [first]
        while len(batch) < self.max_batch:
            try:
                job = self._jobs.get_nowait()
            except queue.Empty:
                break
            if job is None:
                return batch, True
            batch.append(job)
        return batch, False

    def _run(self, batch: list[_Job]) -> None:
        jobs = [job for job in batch if job.future.set_running_or_notify_cancel()]
        if not jobs:
            return
        self.batch_sizes.append(len(jobs))
        try:
            answers = answer_batch(self.searcher, [job.query for job in jobs])
        except Exception as error:  # one bad query must not fail its neighbours: retry alone
            if len(jobs) == 1:
                jobs[0].future.set_exception(error)
                return
            log.warning(
                "a batch of %d queries failed (%s); running them one by one", len(jobs), error
            )
            for job in jobs:
                self._run_alone(job)
            return
        for job, answer in zip(jobs, answers, strict=True):
            job.future.set_result(answer)

    def _run_alone(self, job: _Job) -> None:
        try:
            job.future.set_result(answer_batch(self.searcher, [job.query])[0])
        except Exception as error:
            job.future.set_exception(error)


def answer_batch(searcher: Searcher, queries: Sequence[PreparedQuery]) -> list[Answer]:
    """Encode ``queries`` in one model call and search them in one index call."""
    started = time.perf_counter()
    lock = getattr(searcher, "_lock", None) or contextlib.nullcontext()
    with lock:  # the same lock as Searcher.encode: other users of this searcher stay safe
        vectors = searcher.model.encode_query([q.image for q in queries], [q.text for q in queries])
        truncated = _truncated(searcher.model, [q.text for q in queries])
    matrix = np.asarray(vectors.detach().cpu().float().numpy(), np.float32)
    encoded = time.perf_counter()
    k = max(q.k for q in queries)
    hits = searcher.index.search(matrix, k, [q.exclude for q in queries])
    done = time.perf_counter()
    timings = {
        "encode": (encoded - started) * 1e3,
        "search": (done - encoded) * 1e3,
        "batch": float(len(queries)),
    }
    return [
        Answer(found[: q.k], cut, dict(timings))
        for q, found, cut in zip(queries, hits, truncated, strict=True)
    ]


def _truncated(model: Any, texts: list[str]) -> list[bool]:
    """Which texts exceed the model's token window (and were cut to it when encoded)."""
    tokenizer = getattr(model, "tokenizer", None)
    backbone = getattr(getattr(model, "config", None), "backbone", None)
    limit = getattr(backbone, "max_text_length", None)
    if tokenizer is None or limit is None:
        return [False] * len(texts)
    ids = tokenizer(texts, truncation=True, max_length=limit + 1)["input_ids"]
    return [len(row) > limit for row in ids]
