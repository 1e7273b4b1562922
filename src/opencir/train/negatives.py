"""Hard negatives for composed-retrieval training: each target's nearest images.

A batch of random triplets seldom holds an image close to a query's target, so the in-batch
loss (Eq. 2) can be won on coarse features — how many objects, which colours — while a
benchmark gallery holds near-misses of every target (CIRR's visually similar subsets, the
miniature worlds' distractors) that only fine differences separate. With
``hard_negatives: N`` every triplet brings the N images of the training pool nearest to its
target as extra negatives.

Mining runs once, when training starts: every distinct image of the triplets is embedded with
the model's target encoder, and each triplet keeps its target's N nearest images, skipping the
target itself and the triplet's own reference (which ``reference_negatives`` covers). Another
image showing exactly the target's content would be mined as a negative too; keys cannot tell
such copies apart. The lists are saved in the run folder, so a resumed run trains on the same
ones as an uninterrupted run.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path

import torch
from torch.utils.data import ConcatDataset, Dataset
from tqdm.auto import tqdm

from opencir.atomic import atomic_write
from opencir.train.data import TripletDataset, TripletExample

log = logging.getLogger(__name__)

NEGATIVES_FILE = "hard_negatives.json"
KeyEmbedder = Callable[[Sequence[str]], torch.Tensor]


def nearest_negatives(
    triplets: Sequence[TripletExample], embed: KeyEmbedder, count: int, chunk: int = 2048
) -> list[tuple[str, ...]]:
    """For each triplet, the ``count`` pool images nearest to its target (cosine).

    The pool is every distinct reference and target key; ``embed`` maps keys to
    L2-normalised ``[len(keys), D]`` embeddings. Ties go to the key that sorts first.
    """
    keys = sorted({key for t in triplets for key in (t.reference, t.target)})
    if len(keys) < count + 2:
        raise ValueError(
            f"hard_negatives={count} needs at least {count + 2} distinct images in the "
            f"training triplets, got {len(keys)}"
        )
    position = {key: i for i, key in enumerate(keys)}
    pool = embed(keys)
    targets = torch.tensor([position[t.target] for t in triplets])
    references = torch.tensor([position[t.reference] for t in triplets])
    mined: list[tuple[str, ...]] = []
    for start in range(0, len(triplets), chunk):
        rows = torch.arange(min(chunk, len(triplets) - start))
        scores = pool[targets[start : start + chunk]] @ pool.T
        scores[rows, targets[start : start + chunk]] = float("-inf")
        scores[rows, references[start : start + chunk]] = float("-inf")
        nearest = torch.topk(scores, count, dim=1, sorted=True).indices.tolist()
        mined += [tuple(keys[j] for j in row) for row in nearest]
    return mined


def attach_hard_negatives(
    dataset: Dataset, embedder: Callable[[TripletDataset], KeyEmbedder], count: int, run_dir: Path
) -> None:
    """Give every triplet of ``dataset`` its ``count`` mined negatives (in place).

    ``embedder(part)`` gives the key embedder for one :class:`TripletDataset` (each part
    resolves its own keys). The lists are read from ``run_dir/hard_negatives.json`` when it
    was written for the same triplets and count, else mined and written there.
    """
    parts = _triplet_parts(dataset)
    fingerprint = _fingerprint(parts, count)
    saved = _read_saved(run_dir / NEGATIVES_FILE, fingerprint)
    lists = saved if saved is not None else [
        nearest_negatives(part.triplets, embedder(part), count) for part in parts
    ]  # fmt: skip
    if saved is None:
        payload = {"fingerprint": fingerprint, "count": count, "negatives": lists}
        atomic_write(run_dir / NEGATIVES_FILE, json.dumps(payload).encode())
    for part, negatives in zip(parts, lists, strict=True):
        part.triplets = [
            replace(t, negatives=tuple(n)) for t, n in zip(part.triplets, negatives, strict=True)
        ]


def image_key_embedder(
    encode: Callable[[list], torch.Tensor],
    load_image: Callable[[str], object],
    batch_size: int = 64,
    progress: bool = True,
) -> KeyEmbedder:
    """A key embedder from an image encoder (``encode(images) -> [B, D]``) and a loader."""

    @torch.no_grad()
    def embed(keys: Sequence[str]) -> torch.Tensor:
        batches = range(0, len(keys), batch_size)
        out = []
        for start in tqdm(batches, desc="mining hard negatives", disable=not progress):
            images = [load_image(key) for key in keys[start : start + batch_size]]
            out.append(torch.nn.functional.normalize(encode(images).float(), dim=-1).cpu())
        return torch.cat(out)

    return embed


def _triplet_parts(dataset: Dataset) -> list[TripletDataset]:
    parts = dataset.datasets if isinstance(dataset, ConcatDataset) else [dataset]
    if not all(isinstance(part, TripletDataset) for part in parts):
        raise ValueError("hard_negatives needs triplet data (data.triplets / data.labelled)")
    return list(parts)


def _fingerprint(parts: Sequence[TripletDataset], count: int) -> str:
    digest = hashlib.sha256(str(count).encode())
    for part in parts:
        for t in part.triplets:
            digest.update(f"{t.reference}\0{t.target}\0".encode())
        digest.update(b"\1")
    return digest.hexdigest()


def _read_saved(path: Path, fingerprint: str) -> list | None:
    if not path.is_file():
        return None
    try:
        saved = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        log.warning("ignoring unreadable %s (%s): mining again", path, error)
        return None
    if not isinstance(saved, dict) or saved.get("fingerprint") != fingerprint:
        log.warning("%s was mined for other triplets or another count: mining again", path)
        return None
    log.info("hard negatives read from %s", path)
    return saved["negatives"]
