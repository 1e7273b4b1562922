"""``--engine ray``: the same shard stages on Ray Data, locally or on a cluster.

Each shard is one row of a Ray dataset; a pool of actors (each holding its own collection,
captioner, writer and cache file) processes rows with :class:`~opencir.generate.stages.Stages`
and commits the shard to ``OUT/shards`` itself, exactly as the in-process runner does. So the
two engines produce the same files, and a crashed Ray run is resumed by either engine. On a
cluster (``--ray-address``), ``OUT``, the cache and the images must be on storage that every
node sees at the same path. Ray is imported only here.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Sequence
from typing import Any

from tqdm import tqdm

from opencir.generate.sampling import Pair
from opencir.generate.shards import ShardStore, pairs_digest
from opencir.generate.stages import GenerateConfig, Stages

log = logging.getLogger(__name__)


class ShardWorker:
    """A Ray Data actor: one :class:`Stages` per actor, one shard per row."""

    def __init__(self, config: GenerateConfig) -> None:
        logging.basicConfig(level=logging.INFO)
        self.config = config
        self.store = ShardStore(config.out)
        self.stages: Stages | None = None

    async def _process(
        self, pairs: list[Pair], previous: list[dict[str, Any]]
    ) -> list[dict[str, Any]]:
        if self.stages is None:
            self.stages = Stages(self.config)
        try:
            return await self.stages.process(pairs, previous)
        finally:
            await self.stages.aclose()  # clients are bound to this call's event loop

    def __call__(self, row: dict[str, Any]) -> dict[str, Any]:
        pairs = [Pair.from_dict(p) for p in json.loads(row["pairs"])]
        index, digest = int(row["index"]), pairs_digest(pairs)
        records = asyncio.run(self._process(pairs, self.store.retry_base(index, digest)))
        self.store.commit(index, digest, records)
        ok = sum(1 for r in records if r["type"] == "triplet")
        return {"index": int(row["index"]), "pairs": len(pairs), "ok": ok}


def _init_ray(address: str | None) -> bool:
    """Connect to (or start) Ray; True when this call started it (and should stop it)."""
    try:
        import ray
    except ImportError as error:
        raise ImportError("--engine ray needs Ray Data: pip install 'ray[data]'") from error
    if ray.is_initialized():
        return False
    kwargs: dict[str, Any] = {
        "include_dashboard": False,
        "log_to_driver": False,
        "configure_logging": False,
    }
    if address:
        kwargs["address"] = address
    ray.init(**kwargs)
    return True


def run_ray(
    config: GenerateConfig, tasks: Sequence[tuple[int, list[Pair]]], store: ShardStore, bar: tqdm
) -> None:
    """Process ``tasks`` (shard index, pairs) on Ray Data; shards are committed by the actors."""
    import ray
    import ray.data

    started = _init_ray(config.ray_address)
    try:
        context = ray.data.DataContext.get_current()
        context.enable_progress_bars = False  # ours counts pairs
        rows = [
            {"index": i, "pairs": json.dumps([p.to_dict() for p in pairs])} for i, pairs in tasks
        ]
        dataset = ray.data.from_items(rows, override_num_blocks=len(rows))
        workers = max(1, min(config.ray_workers, len(rows)))
        results = dataset.map(
            ShardWorker,
            fn_constructor_kwargs={"config": config},
            compute=ray.data.ActorPoolStrategy(size=workers),
            num_cpus=1,
            num_gpus=config.ray_gpus_per_worker or None,
        )
        for result in results.iter_rows():
            bar.update(int(result["pairs"]))
        missing = [i for i, pairs in tasks if not store.is_committed(i, pairs_digest(pairs))]
        if missing:
            raise RuntimeError(f"Ray finished but shards {missing[:5]} are not committed")
    finally:
        if started:
            ray.shutdown()
