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
from opencir.train.data import (
    NEGATIVE_CAPTIONS,
    REGIONS,
    PairDataset,
    TripletDataset,
    TripletExample,
    parse_regions,
)
from opencir.train.writer_tasks import seed_dataset


def _triplet_dataset(paths: tuple[str, ...], limit: int | None) -> TripletDataset | None:
    """The triplets of ``paths`` (the first ``limit`` of them), keys resolved per file."""
    if not paths:
        return None
    rows, load_image = open_triplets(list(paths))
    examples = [TripletExample(r.reference, r.text, r.target) for r in rows[:limit]]
    return TripletDataset(examples, load_image)


def _collection_examples(
    path: str, config: TrainConfig
) -> tuple[list[tuple[str, str]], dict[str, list[Any]], Any]:
    """One collection's (key, caption) pairs, what comes with each pair (its negative caption,
    its regions: the fields ``data`` names, in pair order) and the image loader."""
    data = config.data
    where = (("split", data.split),) if data.split else ()
    collection = open_collection(CollectionSpec(path=path, where=where))
    items = [item for item in collection.items() if item.meta.get(data.caption_field)]
    if not items:
        raise ValueError(
            f"data.pairs {path!r} has no images with a {data.caption_field!r} caption"
            + (f" in split {data.split!r}" if data.split else "")
        )
    pairs = [(item.key, str(item.meta[data.caption_field])) for item in items]
    fields = {NEGATIVE_CAPTIONS: data.negative_caption_field, REGIONS: data.region_field}
    extras = {
        name: _pair_extra(name, field, items, path) for name, field in fields.items() if field
    }
    return pairs, extras, collection.load


def _pair_extra(name: str, field: str, items: list[Any], path: str) -> list[Any]:
    """Each item's ``field`` (a negative caption or its regions), checked."""
    lacking = [item.key for item in items if not item.meta.get(field)]
    if lacking:
        raise ValueError(
            f"data {field!r}: {len(lacking)} of the {len(items)} captioned images of "
            f"{path!r} lack it (first: {lacking[0]!r}); every pair needs one "
            "(recipes/miniature/scene_captions.py writes both fields for a ShapesCIR world)"
        )
    if name == REGIONS:
        return [parse_regions(item.meta[field], f"{path!r} image {item.key!r}") for item in items]
    return [_captions(item.meta[field], f"{path!r} image {item.key!r}") for item in items]


def _captions(value: Any, where: str) -> list[str]:
    """A negative-caption field: one caption or a list of them."""
    captions = [value] if isinstance(value, str) else value
    if not isinstance(captions, list) or not all(isinstance(c, str) and c for c in captions):
        raise ValueError(
            f"negative captions of {where}: expected a caption or a list of them, got {value!r}"
        )
    return captions


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
    pairs, extras, load = _collection_examples(data.pairs, config)
    loaders = [load]
    for number, path in enumerate(data.extra_pairs, start=1):
        extra, more, load = _collection_examples(path, config)
        pairs += [(f"{number}\0{key}", caption) for key, caption in extra]
        for name, values in more.items():
            extras[name] += values
        loaders.append(load)
    return PairDataset(pairs, _KeyedLoader(loaders), config.stage != "lm", extras)


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
