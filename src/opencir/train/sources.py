"""Open the data a training config names: image–caption pairs or triplet files.

Generated and labelled triplets are concatenated as ``[generated..., labelled...]`` so the
:class:`~opencir.train.data.MixtureSampler` can draw a fixed labelled share per batch. Each
triplet file resolves its image keys through the collection its ``manifest.json`` records.
"""

from __future__ import annotations

from typing import Any

from torch.utils.data import ConcatDataset, Dataset

from opencir.data.collections import CollectionSpec, open_collection
from opencir.data.triplets import open_triplets
from opencir.train.config import TrainConfig
from opencir.train.data import PairDataset, TripletDataset, TripletExample
from opencir.train.writer_tasks import seed_dataset


def _triplet_dataset(paths: tuple[str, ...], limit: int | None) -> TripletDataset | None:
    """The triplets of ``paths`` (the first ``limit`` of them), keys resolved per file."""
    if not paths:
        return None
    rows, load_image = open_triplets(list(paths))
    examples = [TripletExample(r.reference, r.text, r.target) for r in rows[:limit]]
    return TripletDataset(examples, load_image)


def _collection_pairs(path: str, config: TrainConfig) -> tuple[list[tuple[str, str]], Any]:
    """The (key, caption) pairs of one collection and its image loader."""
    data = config.data
    where = (("split", data.split),) if data.split else ()
    collection = open_collection(CollectionSpec(path=path, where=where))
    pairs = [
        (item.key, str(item.meta[data.caption_field]))
        for item in collection.items()
        if item.meta.get(data.caption_field)
    ]
    if not pairs:
        raise ValueError(
            f"data.pairs {path!r} has no images with a {data.caption_field!r} caption"
            + (f" in split {data.split!r}" if data.split else "")
        )
    return pairs, collection.load


class _KeyedLoader:
    r"""Loads a plain key from ``data.pairs``, ``"<n>\0<key>"`` from its n-th extra collection."""

    def __init__(self, loaders: list[Any]) -> None:
        self.loaders = loaders

    def __call__(self, key: str) -> Any:
        number, sep, own = key.partition("\0")
        return self.loaders[int(number)](own) if sep else self.loaders[0](key)


def pair_dataset(config: TrainConfig) -> PairDataset:
    """The image–caption pairs of ``data.pairs`` and every ``data.extra_pairs`` collection."""
    data = config.data
    if not data.pairs:
        raise ValueError(
            f"the {config.stage} stage needs data.pairs (an image collection with captions)"
        )
    pairs, load = _collection_pairs(data.pairs, config)
    loaders = [load]
    for number, path in enumerate(data.extra_pairs, start=1):
        extra, load = _collection_pairs(path, config)
        pairs += [(f"{number}\0{key}", caption) for key, caption in extra]
        loaders.append(load)
    return PairDataset(pairs, _KeyedLoader(loaders), with_images=config.stage != "lm")


def build_dataset(config: TrainConfig) -> tuple[Dataset, int, int]:
    """Return ``(dataset, n_generated, n_labelled)`` for the stage of ``config``."""
    if config.stage == "writer":
        seeds = seed_dataset(config)
        return seeds, len(seeds), 0
    if config.stage in ("pretrain", "lm"):
        dataset = pair_dataset(config)
        return dataset, len(dataset), 0
    generated = _triplet_dataset(config.data.triplets, config.data.max_triplets)
    labelled = _triplet_dataset(config.data.labelled, None)
    if generated is None and labelled is None:
        raise ValueError("the cir/combiner stages need data.triplets and/or data.labelled files")
    parts = [d for d in (generated, labelled) if d is not None]
    n_generated = len(generated) if generated is not None else 0
    n_labelled = len(labelled) if labelled is not None else 0
    return ConcatDataset(parts), n_generated, n_labelled
