"""The generation run: sample pairs, process shards (in-process or on Ray Data), merge, report.

Output folder::

    OUT/manifest.json      image source + run identity (prompts, models, sampler, seed)
    OUT/shards/part-*.jsonl, part-*.done   committed shards (the unit of resumption)
    OUT/cache/             per-item answer cache (captions, changes, embeddings)
    OUT/triplets.jsonl     (or .parquet) the merged triplets, written when every shard is done
    OUT/failures.jsonl     failed and rejected pairs with stage, reason and detail
    OUT/report.json        counts by reason, tokens, throughput — written last

Running the same command again continues where a crashed run stopped and ends with exactly
the triplets of an uninterrupted run. It also asks again for the pairs that failed on endpoint
errors (an outage, a wrong ``--endpoint``), keeping every other record; a finished folder
without such failures is left as is (a no-op rerun).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from opencir.data.collections import ImageCollection, open_collection
from opencir.data.triplets import (
    MANIFEST_FILE,
    TRIPLET_FILES,
    Triplet,
    atomic_write,
    jsonl_bytes,
    read_manifest,
    write_manifest,
    write_triplets,
)
from opencir.generate.embeddings import Embedded, embed_collection, load_npz
from opencir.generate.sampling import Pair, sample_pairs
from opencir.generate.shards import ShardStore, pairs_digest, shard_slices
from opencir.generate.stages import GenerateConfig, Stages

log = logging.getLogger(__name__)

REPORT_FILE = "report.json"
FAILURES_FILE = "failures.jsonl"

ShardTask = tuple[int, list[Pair]]


@dataclass(frozen=True)
class RunReport:
    """What a run produced and what it cost (also ``OUT/report.json``)."""

    out: str
    pairs: int
    triplets: int
    failed: dict[str, int]
    rejected: dict[str, int]
    image_failures: dict[str, int]
    usage: dict[str, dict[str, int]]
    cache: dict[str, int]
    run: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        ok = max(self.triplets, 1)
        tokens = {
            k: sum(u.get(k, 0) for u in self.usage.values())
            for k in ("prompt_tokens", "completion_tokens", "requests")
        }
        per_triplet = {k: round(v / ok, 2) for k, v in tokens.items()}
        return {
            "out": self.out,
            "pairs": self.pairs,
            "triplets": self.triplets,
            "failed": self.failed,
            "failed_total": sum(self.failed.values()),
            "rejected": self.rejected,
            "rejected_total": sum(self.rejected.values()),
            "image_failures": self.image_failures,
            "usage": self.usage,
            "per_triplet": per_triplet,
            "cache": self.cache,
            "run": self.run,
        }

    def summary(self) -> str:
        """One human line per topic, for the CLI."""
        data = self.to_dict()
        lines = [
            f"{self.triplets} triplets from {self.pairs} pairs in {self.out}",
            f"failed {data['failed_total']} {self.failed or ''}".rstrip(),
            f"rejected {data['rejected_total']} {self.rejected or ''}".rstrip(),
            f"tokens per triplet {data['per_triplet']}",
        ]
        if self.run:
            lines.append(
                f"this run: {self.run.get('shards_processed')} shards in "
                f"{self.run.get('seconds')} s ({self.run.get('pairs_per_s')} pairs/s, "
                f"engine {self.run.get('engine')})"
            )
        cut = {stage: s for stage, s in self.run.get("in_flight", {}).items() if s["cuts"]}
        for stage, limit in cut.items():
            lines.append(
                f"{stage} requests in flight: at most {limit['limit']} of {limit['bound']} at the "
                f"end (lowest {limit['lowest']}, {limit['cuts']} cuts on timeouts or overload)"
            )
        return "\n".join(lines)


# ----------------------------------------------------------------------------- setup


def run_identity(config: GenerateConfig, stages_provenance: Mapping[str, Any]) -> dict[str, Any]:
    """What must not change between a run and its continuation (pairs may grow)."""
    identity = {k: v for k, v in stages_provenance.items() if k != "generator"}
    return {
        **identity,
        "shard_size": config.shard_size,
        "verify_images": config.verify_images,
        "image_max_side": config.image_max_side,
    }


def prompts_of(config: GenerateConfig) -> dict[str, str | None]:
    prompts: dict[str, str | None] = {"writer": config.writer.prompt}
    if config.captioner.kind in ("openai", "hf"):
        prompts["captioner"] = config.captioner.prompt
    return prompts


def check_manifest(
    out: Path, collection: ImageCollection, identity: Mapping[str, Any], prompts: Mapping[str, Any]
) -> None:
    """Write ``manifest.json``, or check that an existing one describes the same run."""
    existing = read_manifest(out)
    source = collection.describe()
    if existing is not None:
        same_source = {
            k: v for k, v in existing["source"].items() if k != "relative_path"
        } == source
        if not same_source or existing.get("run") != json.loads(json.dumps(identity)):
            raise ValueError(
                f"{out} holds a run with a different source or settings "
                f"(see {out / MANIFEST_FILE}); use another --out, or delete the folder to restart"
            )
        return
    write_manifest(out, source, run=identity, prompts=dict(prompts))


def related_embeddings(
    config: GenerateConfig, collection: ImageCollection, keys: Sequence[str]
) -> Embedded:
    sampler = config.sampler
    if sampler.embeddings:
        return load_npz(sampler.embeddings, keys)
    if sampler.embed_model:
        return embed_collection(
            collection,
            keys,
            sampler.embed_model,
            config.cache_path,
            sampler.embed_batch_size,
            config.progress,
        )
    raise ValueError("--sampler related needs --embeddings FILE.npz or --embed-model MODEL")


def plan_pairs(
    config: GenerateConfig, collection: ImageCollection
) -> tuple[list[Pair], dict[str, str]]:
    """The run's pairs (deterministic by seed) and images excluded before sampling."""
    items = collection.items()
    if not items:
        raise ValueError(
            f"no images found in {config.source.path} (filters: {config.source.where})"
        )
    if config.sampler.kind != "related":
        return sample_pairs(items, config.pairs, config.sampler, config.seed), {}
    embedded = related_embeddings(config, collection, [item.key for item in items])
    by_key = {item.key: item for item in items}
    kept = [by_key[k] for k in embedded.keys]
    pairs = sample_pairs(kept, config.pairs, config.sampler, config.seed, embedded.vectors)
    return pairs, embedded.failures


# ----------------------------------------------------------------------------- engines


async def _run_local_async(
    stages: Stages, tasks: Sequence[ShardTask], store: ShardStore, bar: tqdm
) -> None:
    slots = asyncio.Semaphore(stages.inflight_shards())

    async def one(index: int, pairs: list[Pair]) -> None:
        async with slots:
            digest = pairs_digest(pairs)
            previous = await asyncio.to_thread(store.retry_base, index, digest)
            records = await stages.process(pairs, previous)
            # fsync off the event loop: the other shards' requests keep flowing meanwhile
            await asyncio.to_thread(store.commit, index, digest, records)
            bar.update(len(pairs))

    try:
        await asyncio.gather(*(one(index, pairs) for index, pairs in tasks))
    finally:
        await stages.aclose()
        stages.cache.close()


def run_local(stages: Stages, tasks: Sequence[ShardTask], store: ShardStore, bar: tqdm) -> None:
    """Process shards in this process (asyncio: bounded concurrent requests, overlapping shards)."""
    asyncio.run(_run_local_async(stages, tasks, store, bar))


# ----------------------------------------------------------------------------- merge + report


def _count(records: Iterable[Mapping[str, Any]], status: str) -> dict[str, int]:
    counts = Counter(r["reason"] for r in records if r.get("status") == status)
    return dict(sorted(counts.items()))


def _sum_usage(stats: Sequence[Mapping[str, Any]], name: str) -> dict[str, int]:
    total: Counter[str] = Counter()
    for s in stats:
        total.update(s.get(name, {}))
    return dict(total)


def finalize(
    config: GenerateConfig,
    store: ShardStore,
    n_shards: int,
    run: dict[str, Any],
    pre_failures: Mapping[str, str],
) -> RunReport:
    """Merge committed shards into the final files and write the report (last)."""
    out = Path(config.out)
    triplets, failures, stats = [], [], []
    for record in store.read_all(n_shards):
        kind = record.pop("type")
        if kind == "triplet":
            triplets.append(Triplet.from_row(record))
        elif kind == "failure":
            failures.append(record)
        else:
            stats.append(record)
    for name in TRIPLET_FILES:
        if name != f"triplets.{config.format}":
            (out / name).unlink(missing_ok=True)
    write_triplets(triplets, out / f"triplets.{config.format}")
    atomic_write(out / FAILURES_FILE, jsonl_bytes(failures))
    failed_images = dict(pre_failures)
    for s in stats:
        failed_images.update(s.get("image_failures", {}))
    image_failures = Counter(failed_images.values())
    report = RunReport(
        out=str(out),
        pairs=len(triplets) + len(failures),
        triplets=len(triplets),
        failed=_count(failures, "failed"),
        rejected=_count(failures, "rejected"),
        image_failures=dict(sorted(image_failures.items())),
        usage={
            "caption": _sum_usage(stats, "caption_usage"),
            "change": _sum_usage(stats, "change_usage"),
        },
        cache={
            "captions_cached": sum(s.get("captions_cached", 0) for s in stats),
            "changes_cached": sum(s.get("changes_cached", 0) for s in stats),
        },
        run=run,
    )
    text = json.dumps(report.to_dict(), indent=2, sort_keys=True) + "\n"
    atomic_write(out / REPORT_FILE, text.encode())
    return report


# ----------------------------------------------------------------------------- entry point


@dataclass
class _Plan:
    stages: Stages
    pairs: list[Pair]
    slices: list[list[Pair]]
    tasks: list[ShardTask]
    pre_failures: dict[str, str]


def _plan(config: GenerateConfig, store: ShardStore) -> _Plan:
    """Check the folder, sample the pairs, and find the shards still to do."""
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    collection = open_collection(config.source)
    stages = Stages(config, collection)
    check_manifest(out, collection, run_identity(config, stages.provenance()), prompts_of(config))
    pairs, pre_failures = plan_pairs(config, collection)
    slices = shard_slices(pairs, config.shard_size)
    store.clean_temporaries()
    tasks = [
        (i, s)
        for i, s in enumerate(slices)
        if not store.is_final(i, pairs_digest(s), config.retry_failed)
    ]
    retried = sum(store.is_committed(i, pairs_digest(s)) for i, s in tasks)
    if retried:
        log.info("asking again for the failed pairs of %d finished shards", retried)
    if tasks:
        for name in (REPORT_FILE, *TRIPLET_FILES):  # the folder is "finished" only once merged
            (out / name).unlink(missing_ok=True)
    return _Plan(stages, pairs, slices, tasks, pre_failures)


def generate(config: GenerateConfig) -> RunReport:
    """Run (or continue) a generation job; returns the report of the finished folder."""
    started = time.monotonic()
    store = ShardStore(config.out)
    plan = _plan(config, store)
    todo = sum(len(pairs) for _, pairs in plan.tasks)
    log.info(
        "%d pairs in %d shards, %d shards to do (%s engine)",
        len(plan.pairs),
        len(plan.slices),
        len(plan.tasks),
        config.engine,
    )
    bar = tqdm(
        total=len(plan.pairs),
        initial=len(plan.pairs) - todo,
        desc="generate",
        unit="pair",
        disable=not config.progress,
    )
    try:
        if plan.tasks and config.engine == "ray":
            from opencir.generate.ray_engine import run_ray

            run_ray(config, plan.tasks, store, bar)
        elif plan.tasks:
            run_local(plan.stages, plan.tasks, store, bar)
    finally:
        bar.close()
    seconds = time.monotonic() - started
    run = {
        "engine": config.engine,
        "seconds": round(seconds, 2),
        "shards_processed": len(plan.tasks),
        "pairs_processed": todo,
        "pairs_per_s": round(todo / seconds, 2) if seconds else 0.0,
    }
    in_flight = plan.stages.in_flight() if config.engine == "local" else {}
    if in_flight:  # the Ray engine's clients live in its workers
        run["in_flight"] = in_flight
    report = finalize(config, store, len(plan.slices), run, plan.pre_failures)
    log.info("finished %s: %d triplets from %d pairs", config.out, report.triplets, report.pairs)
    return report
