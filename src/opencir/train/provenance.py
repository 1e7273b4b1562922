"""What a trained checkpoint's model card records: the recipe and where its data came from."""

from __future__ import annotations

from typing import Any

from opencir.data.triplets import read_manifest, triplet_file
from opencir.models.card import CardRecords
from opencir.train.config import TrainConfig


def training_records(config: TrainConfig) -> CardRecords:
    """The resolved recipe plus one provenance record per data source of the stage."""
    data = config.data
    sources = [_triplet_source(path, "generated triplets") for path in data.triplets]
    sources += [_triplet_source(path, "labelled triplets") for path in data.labelled]
    if data.pairs and config.stage in ("pretrain", "lm"):
        for path in (data.pairs, *data.extra_pairs):
            sources.append({"kind": "image–caption pairs", "path": path})
    return CardRecords(training=config.to_dict(), data=tuple(sources))


def _triplet_source(path: str, kind: str) -> dict[str, Any]:
    """A triplet file's generation run from its folder's ``manifest.json`` (if it has one)."""
    record: dict[str, Any] = {"kind": kind, "path": path}
    try:
        manifest = read_manifest(triplet_file(path).parent)
    except (OSError, ValueError):
        manifest = None
    if manifest is not None:
        record["provenance"] = {"run": manifest.get("run"), "source": manifest.get("source")}
    return record
