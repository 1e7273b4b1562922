"""Open the data a training config names: image–caption pairs or triplet files.

Generated and labelled triplets are concatenated as ``[generated..., labelled...]`` so the
:class:`~opencir.train.data.MixtureSampler` can draw a fixed labelled share per batch.
"""

from __future__ import annotations

from torch.utils.data import ConcatDataset, Dataset

from opencir.train.config import TrainConfig
from opencir.train.data import PairDataset, TripletDataset, TripletExample


def _triplet_dataset(paths: tuple[str, ...], limit: int | None) -> TripletDataset | None:
    from opencir.data.triplets import open_triplets

    if not paths:
        return None
    rows, load_image = open_triplets(list(paths))
    examples = [TripletExample(r.reference, r.text, r.target) for r in rows]
    return TripletDataset(examples[:limit] if limit else examples, load_image)


def _pair_dataset(config: TrainConfig) -> PairDataset:
    from opencir.data.collections import open_collection

    data = config.data
    if not data.pairs:
        raise ValueError("the pretrain stage needs data.pairs (an image collection with captions)")
    collection = open_collection(data.pairs)
    pairs = [
        (item.key, str(item.meta[data.caption_field]))
        for item in collection.items()
        if (data.split is None or item.meta.get("split") == data.split)
        and item.meta.get(data.caption_field)
    ]
    return PairDataset(pairs, collection.load)


def build_dataset(config: TrainConfig) -> tuple[Dataset, int, int]:
    """Return ``(dataset, n_generated, n_labelled)`` for the stage of ``config``."""
    if config.stage == "pretrain":
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
