"""Open the data a training config names: image–caption pairs or triplet files.

Generated and labelled triplets are concatenated as ``[generated..., labelled...]`` so the
:class:`~opencir.train.data.MixtureSampler` can draw a fixed labelled share per batch. Each
triplet file resolves its image keys through the collection its ``manifest.json`` records.
"""

from __future__ import annotations

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


def _pair_dataset(config: TrainConfig) -> PairDataset:
    data = config.data
    if not data.pairs:
        raise ValueError(
            f"the {config.stage} stage needs data.pairs (an image collection with captions)"
        )
    where = (("split", data.split),) if data.split else ()
    collection = open_collection(CollectionSpec(path=data.pairs, where=where))
    pairs = [
        (item.key, str(item.meta[data.caption_field]))
        for item in collection.items()
        if item.meta.get(data.caption_field)
    ]
    if not pairs:
        raise ValueError(
            f"data.pairs {data.pairs!r} has no images with a {data.caption_field!r} caption"
            + (f" in split {data.split!r}" if data.split else "")
        )
    return PairDataset(pairs, collection.load, with_images=config.stage != "lm")


def build_dataset(config: TrainConfig) -> tuple[Dataset, int, int]:
    """Return ``(dataset, n_generated, n_labelled)`` for the stage of ``config``."""
    if config.stage == "writer":
        seeds = seed_dataset(config)
        return seeds, len(seeds), 0
    if config.stage in ("pretrain", "lm"):
        dataset = _pair_dataset(config)
        return dataset, len(dataset), 0
    generated = _triplet_dataset(config.data.triplets, config.data.max_triplets)
    labelled = _triplet_dataset(config.data.labelled, None)
    if generated is None and labelled is None:
        raise ValueError("the cir/combiner stages need data.triplets and/or data.labelled files")
    parts = [d for d in (generated, labelled) if d is not None]
    n_generated = len(generated) if generated is not None else 0
    n_labelled = len(labelled) if labelled is not None else 0
    return ConcatDataset(parts), n_generated, n_labelled
