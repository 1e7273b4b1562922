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

The pretraining stage takes ``hard_negatives`` too: every image–caption pair brings the pairs
whose captions are nearest to its own (by the text encoder, which is pretrained while the
image tower starts from scratch), so the contrastive loss must tell apart images whose
descriptions differ in one detail. Pairs with exactly the same caption are never mined as
each other's negatives.
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
from opencir.train.data import PairDataset, TripletDataset, TripletExample

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
    targets = torch.tensor([position[t.target] for t in triplets])
    references = torch.tensor([position[t.reference] for t in triplets])
    nearest = nearest_rows(embed(keys), targets, count, [targets, references], chunk)
    return [tuple(keys[j] for j in row) for row in nearest]


def nearest_rows(
    pool: torch.Tensor,
    queries: torch.Tensor,
    count: int,
    excluded: Sequence[torch.Tensor],
    chunk: int = 2048,
) -> list[list[int]]:
    """For each pool row ``queries[i]``, the ``count`` nearest pool rows (dot product).

    Row ``excluded[k][i]`` of the pool is never chosen for query ``i``; ties go to the lower
    row. ``pool`` is ``[N, D]`` (L2-normalised for cosine), ``queries`` and each of
    ``excluded`` are ``[Q]`` row indices.
    """
    out: list[list[int]] = []
    for start in range(0, len(queries), chunk):
        stop = min(start + chunk, len(queries))
        rows = torch.arange(stop - start)
        scores = pool[queries[start:stop]] @ pool.T
        for columns in excluded:
            scores[rows, columns[start:stop]] = float("-inf")
        out += torch.topk(scores, count, dim=1, sorted=True).indices.tolist()
    return out


def nearest_caption_negatives(
    captions: Sequence[str], embed_texts: Callable[[Sequence[str]], torch.Tensor], count: int
) -> list[tuple[int, ...]]:
    """For each pair, ``count`` pairs whose captions are nearest to its own and different.

    Distinct captions are embedded once (``embed_texts`` gives L2-normalised rows); each
    neighbouring caption stands for the first pair that carries it.
    """
    distinct = sorted(set(captions))
    if len(distinct) < count + 1:
        raise ValueError(
            f"hard_negatives={count} needs at least {count + 1} distinct captions in "
            f"data.pairs, got {len(distinct)}"
        )
    row_of = {caption: i for i, caption in enumerate(distinct)}
    first_pair: dict[int, int] = {}
    for index, caption in enumerate(captions):
        first_pair.setdefault(row_of[caption], index)
    own = torch.tensor([row_of[c] for c in captions])
    nearest = nearest_rows(embed_texts(distinct), own, count, [own])
    return [tuple(first_pair[j] for j in row) for row in nearest]


def attach_hard_negatives(
    dataset: Dataset, embedder: Callable[[TripletDataset], KeyEmbedder], count: int, run_dir: Path
) -> None:
    """Give every triplet of ``dataset`` its ``count`` mined negatives (in place).

    ``embedder(part)`` gives the key embedder for one :class:`TripletDataset` (each part
    resolves its own keys). The lists are read from ``run_dir/hard_negatives.json`` when it
    was written for the same triplets and count, else mined and written there.
    """
    parts = _triplet_parts(dataset)
    lists = _saved_or_mined(
        run_dir,
        _fingerprint(count, [[(t.reference, t.target) for t in part.triplets] for part in parts]),
        count,
        lambda: [nearest_negatives(part.triplets, embedder(part), count) for part in parts],
    )
    for part, negatives in zip(parts, lists, strict=True):
        part.triplets = [
            replace(t, negatives=tuple(n)) for t, n in zip(part.triplets, negatives, strict=True)
        ]


def attach_pair_negatives(
    dataset: PairDataset,
    embed_texts: Callable[[Sequence[str]], torch.Tensor],
    count: int,
    run_dir: Path,
) -> None:
    """Give every pair of ``dataset`` the ``count`` pairs with the nearest other captions.

    Saved in and reused from ``run_dir/hard_negatives.json`` like the triplets' lists.
    """
    captions = [caption for _, caption in dataset.pairs]
    dataset.negatives = [
        tuple(row)
        for row in _saved_or_mined(
            run_dir,
            _fingerprint(count, [dataset.pairs]),
            count,
            lambda: nearest_caption_negatives(captions, embed_texts, count),
        )
    ]


def _saved_or_mined(run_dir: Path, fingerprint: str, count: int, mine: Callable[[], list]) -> list:
    """The lists saved in ``run_dir`` for ``fingerprint``, else ``mine()``, saved there."""
    saved = _read_saved(run_dir / NEGATIVES_FILE, fingerprint)
    if saved is not None:
        return saved
    lists = mine()
    payload = {"fingerprint": fingerprint, "count": count, "negatives": lists}
    atomic_write(run_dir / NEGATIVES_FILE, json.dumps(payload).encode())
    return lists


def batched_embedder(
    encode: Callable[[Sequence], torch.Tensor], batch_size: int = 64, progress: bool = True
) -> Callable[[Sequence], torch.Tensor]:
    """Items → L2-normalised ``[N, D]`` rows, ``encode`` run on ``batch_size`` items at a time."""

    @torch.no_grad()
    def embed(items: Sequence) -> torch.Tensor:
        batches = range(0, len(items), batch_size)
        out = []
        for start in tqdm(batches, desc="mining hard negatives", disable=not progress):
            rows = encode(items[start : start + batch_size]).float()
            out.append(torch.nn.functional.normalize(rows, dim=-1).cpu())
        return torch.cat(out)

    return embed


def image_key_embedder(
    encode: Callable[[list], torch.Tensor],
    load_image: Callable[[str], object],
    batch_size: int = 64,
    progress: bool = True,
) -> KeyEmbedder:
    """A key embedder from an image encoder (``encode(images) -> [B, D]``) and a loader."""
    return batched_embedder(
        lambda keys: encode([load_image(key) for key in keys]), batch_size, progress
    )


def _triplet_parts(dataset: Dataset) -> list[TripletDataset]:
    parts = dataset.datasets if isinstance(dataset, ConcatDataset) else [dataset]
    if not all(isinstance(part, TripletDataset) for part in parts):
        raise ValueError("hard_negatives needs triplet data (data.triplets / data.labelled)")
    return list(parts)


def _fingerprint(count: int, parts: Sequence[Sequence[tuple[str, str]]]) -> str:
    """What the saved lists were mined for: the count and every item's two strings, per part."""
    digest = hashlib.sha256(str(count).encode())
    for part in parts:
        for first, second in part:
            digest.update(f"{first}\0{second}\0".encode())
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
