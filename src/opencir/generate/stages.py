"""The per-shard pipeline: load images → caption → write changes → records.

:class:`Stages` is built once per process (the in-process runner, or each Ray worker) and
turns one shard's pairs into records, consulting the answer cache at both model stages.
Records come out in pair order whatever order the requests finish in, so a shard's content
depends only on its pairs and the models' answers.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from opencir.data.collections import CollectionSpec, ImageCollection, open_collection
from opencir.data.images import ImageLoadError, load_image
from opencir.data.triplets import Triplet
from opencir.generate.cache import ResultCache
from opencir.generate.captioners import CaptionerConfig, build_captioner
from opencir.generate.client import ChatClient, Usage
from opencir.generate.jobs import ImageJob, Outcome, PairJob, content_hash, is_retryable
from opencir.generate.prompts import prompt_hash
from opencir.generate.sampling import Pair, SamplerConfig
from opencir.generate.writers import WriterConfig, build_writer

log = logging.getLogger(__name__)

ENGINES = ("local", "ray")


@dataclass(frozen=True)
class GenerateConfig:
    """One generation run: source, output, how many pairs, and the three stages.

    ``shard_size`` pairs are committed at a time; at least ``inflight_shards`` are processed
    at once (so the writer stage of one overlaps the loading and captioning of the next), and
    more when the endpoints' concurrency needs them: enough pairs stay in flight to keep every
    request slot busy across shard boundaries (:meth:`Stages.inflight_shards`).
    ``verify_images`` decodes every image even when no stage needs pixels (sidecar captions +
    a text writer), so unreadable images become recorded failures instead of training-time
    surprises; the pixels are then dropped at once, so in-flight shards hold no images.
    ``retry_failed``: a rerun asks again for the pairs that earlier runs lost to endpoint
    errors (:func:`~opencir.generate.jobs.is_retryable`); ``False`` keeps those failures.
    """

    source: CollectionSpec
    out: str
    pairs: int
    seed: int = 0
    retry_failed: bool = True
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    captioner: CaptionerConfig = field(default_factory=CaptionerConfig)
    writer: WriterConfig = field(default_factory=lambda: WriterConfig(kind="template"))
    shard_size: int = 256
    inflight_shards: int = 2
    format: str = "jsonl"
    cache_dir: str | None = None
    verify_images: bool = True
    image_max_side: int = 1024
    load_workers: int = 8
    engine: str = "local"
    ray_address: str | None = None
    ray_workers: int = 2
    ray_gpus_per_worker: float = 0.0
    progress: bool = True

    def __post_init__(self) -> None:
        if self.engine not in ENGINES:
            raise ValueError(f"engine must be one of {ENGINES}, got {self.engine!r}")
        if self.format not in ("jsonl", "parquet"):
            raise ValueError(f"format must be jsonl or parquet, got {self.format!r}")
        if self.pairs < 1 or self.shard_size < 1 or self.inflight_shards < 1:
            raise ValueError("pairs, shard_size and inflight_shards must be >= 1")
        if self.writer.kind in ("llm", "hf") and self.captioner.kind == "none":
            raise ValueError(
                f"the {self.writer.kind} writer reads captions: pick --captioner sidecar, "
                "openai or hf"
            )

    @property
    def cache_path(self) -> Path:
        return Path(self.cache_dir) if self.cache_dir else Path(self.out) / "cache"


def _failure(pair: Pair, status: str, stage: str, reason: str, detail: str = "") -> dict[str, Any]:
    return {
        "type": "failure",
        "id": triplet_id(pair),
        "reference": pair.reference,
        "target": pair.target,
        "strategy": pair.strategy,
        "status": status,
        "stage": stage,
        "reason": reason,
        "detail": detail,
    }


def triplet_id(pair: Pair) -> str:
    """A stable id: the same pair gets the same id in every run."""
    text = f"{pair.reference}\x1f{pair.target}".encode()
    return hashlib.blake2b(text, digest_size=8).hexdigest()


class Stages:
    """Collection, captioner, writer and cache of one process."""

    def __init__(self, config: GenerateConfig, collection: ImageCollection | None = None) -> None:
        self.config = config
        self.collection = collection or open_collection(config.source)
        self.meta = {item.key: item.meta for item in self.collection.items()}
        self.captioner = build_captioner(config.captioner)
        self.writer = build_writer(config.writer, config.seed)
        self.cache = ResultCache(config.cache_path)
        self._pending: dict[str, asyncio.Future[Outcome]] = {}
        self.uses_captions = self.writer.needs_captions and config.captioner.kind != "none"
        self.keeps_pixels = config.captioner.kind in ("openai", "hf") or (
            config.writer.kind == "pair-vlm"
        )
        self.needs_pixels = config.verify_images or self.keeps_pixels

    def concurrency(self) -> int:
        """The most model requests this process keeps in flight at once (0: no model calls)."""
        endpoints = [self.config.writer.endpoint] if self.config.writer.kind != "template" else []
        if self.uses_captions and self.config.captioner.kind == "openai":
            endpoints.append(self.config.captioner.endpoint)
        return max((e.concurrency for e in endpoints if e is not None), default=0)

    def inflight_shards(self) -> int:
        """Shards processed at once: the configured floor, or enough for 2x the concurrency.

        A shard's requests end in a tail (its last answers) and its next stage waits for its
        images; with twice the request slots' worth of pairs in flight, other shards fill the
        slots meanwhile, so the server never idles at a shard boundary.
        """
        size = self.config.shard_size
        needed = -(-2 * self.concurrency() // size) + 1 if self.concurrency() else 1
        return max(self.config.inflight_shards, needed)

    def in_flight(self) -> dict[str, dict[str, int]]:
        """Each model client's in-flight limit, by stage (see ``AdaptiveLimit.stats``)."""
        models = {"change": self.writer}
        if self.uses_captions:
            models["caption"] = self.captioner
        clients = {stage: getattr(model, "client", None) for stage, model in models.items()}
        return {
            stage: client.in_flight.stats()
            for stage, client in clients.items()
            if isinstance(client, ChatClient)
        }

    def provenance(self) -> dict[str, Any]:
        """What produced every triplet of this run (recorded per triplet and in the manifest)."""
        from opencir import __version__

        prov: dict[str, Any] = {
            "generator": f"opencir {__version__}",
            "seed": self.config.seed,
            "sampler": self.config.sampler.provenance(),
            "writer": self.writer.provenance(),
        }
        if self.uses_captions:
            prov["captioner"] = self.captioner.provenance()
        return prov

    # ------------------------------------------------------------------ images

    def _load(self, key: str) -> ImageJob:
        job = ImageJob(key, self.meta.get(key, {}))
        try:
            data = self.collection.read_bytes(key)
            job.sha = content_hash(data)
            if self.needs_pixels:
                image = load_image(data, self.config.source.max_pixels, key)
                if self.keeps_pixels:  # else decoded only to verify it
                    job.image = _shrink(image, self.config.image_max_side)
        except ImageLoadError as error:
            job.sha, job.error = None, error.reason
            log.debug("image %s failed: %s", key, error)
        return job

    async def load_images(self, keys: Sequence[str]) -> dict[str, ImageJob]:
        slots = asyncio.Semaphore(self.config.load_workers)

        async def one(key: str) -> ImageJob:
            async with slots:
                return await asyncio.to_thread(self._load, key)

        return {job.key: job for job in await asyncio.gather(*(one(k) for k in keys))}

    # ------------------------------------------------------------------ cached model stages

    async def caption(self, jobs: Sequence[ImageJob]) -> dict[str, Outcome]:
        """Captions by key: cached, shared with a shard already asking, or asked now."""
        namespace = self.captioner.cache_namespace() or "uncached"
        found: dict[str, Outcome] = {}
        waiting: dict[str, asyncio.Future[Outcome]] = {}
        missing: list[ImageJob] = []
        for job in jobs:
            key = f"{namespace}:{job.sha}"
            hit = self.cache.get(key) if self.captioner.cache_namespace() else None
            if hit is not None:
                found[job.key] = Outcome.from_cache(hit)
            elif key in self._pending:  # the same image in a shard still in flight
                waiting[job.key] = self._pending[key]
            else:
                self._pending[key] = asyncio.get_running_loop().create_future()
                missing.append(job)
        outcomes: list[Outcome] = []
        try:
            outcomes = await self.captioner.caption_many(missing)
        finally:  # wake the shards waiting on these images, even if this one failed
            for n, job in enumerate(missing):
                result = outcomes[n] if n < len(outcomes) else Outcome.failed("cancelled")
                self._pending.pop(f"{namespace}:{job.sha}").set_result(result)
        for job, outcome in zip(missing, outcomes, strict=True):
            found[job.key] = outcome
            if self.captioner.cache_namespace() and outcome.status == "ok":
                self.cache.put(f"{namespace}:{job.sha}", outcome.to_cache())
        for key, future in waiting.items():
            found[key] = await future
        return found

    def _change_key(self, job: PairJob) -> str | None:
        namespace = self.writer.cache_namespace()
        if namespace is None:
            return None
        captions = prompt_hash(job.reference_caption or "", job.target_caption or "")
        return f"{namespace}:{job.reference.sha}:{job.target.sha}:{captions}"

    async def write(self, jobs: Sequence[PairJob]) -> list[Outcome]:
        outcomes: list[Outcome | None] = []
        missing: list[tuple[int, PairJob]] = []
        for n, job in enumerate(jobs):
            key = self._change_key(job)
            hit = self.cache.get(key) if key else None
            outcomes.append(Outcome.from_cache(hit) if hit is not None else None)
            if hit is None:
                missing.append((n, job))
        answers = await self.writer.write_many([job for _, job in missing])
        for (n, job), outcome in zip(missing, answers, strict=True):
            outcomes[n] = outcome
            key = self._change_key(job)
            if key and outcome.status in ("ok", "rejected"):
                self.cache.put(key, outcome.to_cache())
        return [o for o in outcomes if o is not None]

    # ------------------------------------------------------------------ one shard

    async def process(
        self, pairs: Sequence[Pair], previous: Sequence[Mapping[str, Any]] = ()
    ) -> list[dict[str, Any]]:
        """All records (triplets, failures, stats) of one shard, in pair order.

        ``previous``: the shard's committed records; its retryable failures are processed
        again and every other record is kept as it is.
        """
        if previous:
            return await self._complete(pairs, previous)
        keys = list(dict.fromkeys(k for p in pairs for k in (p.reference, p.target)))
        images = await self.load_images(keys)
        loaded = [images[k] for k in keys if images[k].error is None]
        captions = await self.caption(loaded) if self.uses_captions else {}
        records: list[dict[str, Any] | None] = []
        jobs: list[tuple[int, PairJob]] = []
        for pair in pairs:
            problem = self._problem(pair, images, captions)
            records.append(problem)
            if problem is None:
                jobs.append((len(records) - 1, self._pair_job(pair, images, captions)))
        outcomes = await self.write([job for _, job in jobs])
        provenance = self.provenance()
        for (n, job), outcome in zip(jobs, outcomes, strict=True):
            records[n] = self._record(job, outcome, provenance)
        stats = _stats(images, captions, outcomes)
        return [r for r in records if r is not None] + [stats]

    async def _complete(
        self, pairs: Sequence[Pair], previous: Sequence[Mapping[str, Any]]
    ) -> list[dict[str, Any]]:
        """``previous`` with its retryable failures processed again (one stats record per run)."""
        kept = {r["id"]: dict(r) for r in previous if r["type"] != "stats" and not is_retryable(r)}
        redo = [pair for pair in pairs if triplet_id(pair) not in kept]
        fresh = await self.process(redo) if redo else []
        by_id = {**kept, **{r["id"]: r for r in fresh if r["type"] != "stats"}}
        stats = [dict(r) for r in (*previous, *fresh) if r["type"] == "stats"]
        return [by_id[triplet_id(pair)] for pair in pairs] + stats

    def _problem(
        self, pair: Pair, images: Mapping[str, ImageJob], captions: Mapping[str, Outcome]
    ) -> dict[str, Any] | None:
        for side, key in (("reference", pair.reference), ("target", pair.target)):
            job = images[key]
            if job.error is not None:
                return _failure(pair, "failed", "load", f"image_{job.error}", f"{side} {key}")
            outcome = captions.get(key)
            if outcome is not None and outcome.status != "ok" and not self.writer.captions_optional:
                detail = f"{side} {key}: {outcome.detail}"[:300]
                return _failure(pair, "failed", "caption", f"caption_{outcome.reason}", detail)
        return None

    def _pair_job(
        self, pair: Pair, images: Mapping[str, ImageJob], captions: Mapping[str, Outcome]
    ) -> PairJob:
        def text(key: str) -> str | None:
            outcome = captions.get(key)
            return outcome.text if outcome is not None and outcome.status == "ok" else None

        ref, tgt = images[pair.reference], images[pair.target]
        return PairJob(pair, ref, tgt, text(pair.reference), text(pair.target))

    def _record(
        self, job: PairJob, outcome: Outcome, provenance: Mapping[str, Any]
    ) -> dict[str, Any]:
        pair = job.pair
        if outcome.status != "ok" or outcome.text is None:
            return _failure(
                pair, outcome.status, "change", outcome.reason or "unknown", outcome.detail[:300]
            )
        prov = {
            **provenance,
            "strategy": pair.strategy,
            "pair_score": pair.score,
            "reference_sha": job.reference.sha,
            "target_sha": job.target.sha,
            "attempts": outcome.attempts,
        }
        extra: dict[str, Any] = {"strategy": pair.strategy}
        if self.uses_captions:
            extra.update(reference_caption=job.reference_caption, target_caption=job.target_caption)
        triplet = Triplet(triplet_id(pair), pair.reference, pair.target, outcome.text, prov, extra)
        return {"type": "triplet", **triplet.to_row()}

    async def aclose(self) -> None:
        await self.captioner.aclose()
        await self.writer.aclose()


def _shrink(image: Image.Image, max_side: int) -> Image.Image:
    if max(image.size) > max_side:
        image.thumbnail((max_side, max_side), Image.Resampling.BICUBIC)
    return image


def _usage(outcomes: Sequence[Outcome]) -> dict[str, int]:
    total = sum((o.usage for o in outcomes), Usage())
    return total.to_dict()


def _stats(
    images: Mapping[str, ImageJob], captions: Mapping[str, Outcome], changes: Sequence[Outcome]
) -> dict[str, Any]:
    """Counts and spend of one shard (summed by the run report)."""
    caption_list = list(captions.values())
    return {
        "type": "stats",
        "images": len(images),
        "image_failures": {j.key: j.error for j in images.values() if j.error},
        "captions": len(caption_list),
        "captions_cached": sum(o.cached for o in caption_list),
        "caption_usage": _usage(caption_list),
        "changes": len(changes),
        "changes_cached": sum(o.cached for o in changes),
        "change_usage": _usage(changes),
    }
