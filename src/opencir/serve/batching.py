"""Micro-batching of concurrent queries: one model call and one FAISS search per batch.

The model and its tokenizer are not safe to call from several threads at once. Rather than
serialising queries one by one behind a lock, the request threads take turns as *leader*:
the thread that finds the model free takes every query waiting at that moment (its own
first among them, up to ``max_batch``), encodes them in one forward pass, searches them in one
index call, and hands each waiting thread its answer; one of the threads still waiting then
leads the next batch. On a CPU a batched forward pass and a batched exact search (one matrix
product over the gallery) cost little more than a single query, so throughput grows with
load. A lone query runs at once in its own request thread: no worker thread to hand over to,
no waiting for company, nothing added to its latency.

The request handler runs all of this in the thread pool, so the event loop is never blocked;
decoding uploads and loading gallery images happen in the request threads, in parallel.
"""

from __future__ import annotations

import contextlib
import logging
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
    """Runs concurrent queries in batches, led in turn by the request threads themselves."""

    def __init__(self, searcher: Searcher, max_batch: int = DEFAULT_MAX_BATCH) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, got {max_batch}")
        self.searcher, self.max_batch = searcher, max_batch
        self.batch_sizes: list[int] = []  # every batch run, for tests and load reports
        self._waiting: list[_Job] = []
        self._busy = False
        self._turn = threading.Condition()

    @property
    def queued(self) -> int:
        """Queries waiting for the model."""
        with self._turn:
            return len(self._waiting)

    def answer(self, query: PreparedQuery) -> Answer:
        """Block until ``query`` is answered, leading batches whenever the model is free."""
        job = _Job(query, Future())
        with self._turn:
            self._waiting.append(job)
        while True:
            with self._turn:
                while self._busy and not job.future.done():
                    self._turn.wait()
                if job.future.done():
                    return job.future.result()
                self._busy = True
                batch = self._waiting[: self.max_batch]
                del self._waiting[: self.max_batch]
            try:
                self._run(batch)
            finally:
                with self._turn:
                    self._busy = False
                    self._turn.notify_all()

    def _run(self, jobs: list[_Job]) -> None:
        self.batch_sizes.append(len(jobs))
        try:
            answers = answer_batch(self.searcher, [job.query for job in jobs])
        except Exception as error:  # one bad query must not fail its neighbours: retry alone
            if len(jobs) == 1:
                jobs[0].future.set_exception(error)
                return
            log.warning("a batch of %d failed (%s); running its queries alone", len(jobs), error)
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
