"""Hard negatives for composed-retrieval training: each target's nearest images.

A batch of random triplets seldom holds an image close to a query's target, so the in-batch
loss (Eq. 2) can be won on coarse features — how many objects, which colours — while a
benchmark gallery holds near-misses of every target (CIRR's visually similar subsets, the
miniature worlds' distractors) that only fine differences separate. With
``hard_negatives: N`` every triplet brings the N images of the training pool nearest to its
target as extra negatives.

Mining runs once, when training starts: every distinct image of the triplets is embedded with
the model's target encoder, and each triplet keeps its target's N nearest images, skipping the
target itself, the triplet's own reference (which ``reference_negatives`` covers) and every
other target of the same query — triplets with the same reference and text are one query
with several right answers (ground truth lists every image showing the wanted scene), and
those images are by construction the target's nearest, so mining them would teach the model
to push right answers away. Another image showing exactly the target's content that is not
listed as a target would still be mined; keys cannot tell such copies apart. The lists are
saved in the run folder, so a resumed run trains on the same ones as an uninterrupted run.

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
    answers: dict[tuple[str, str], set[int]] = {}
    for t in triplets:
        answers.setdefault((t.reference, t.text), set()).add(position[t.target])
    targets = torch.tensor([position[t.target] for t in triplets])
    excluded = [sorted(answers[(t.reference, t.text)] | {position[t.reference]}) for t in triplets]
    nearest = nearest_rows(embed(keys), targets, count, excluded, chunk)
    return [tuple(keys[j] for j in row) for row in nearest]


def nearest_rows(
    pool: torch.Tensor,
    queries: torch.Tensor,
    count: int,
    excluded: Sequence[Sequence[int]],
    chunk: int = 2048,
) -> list[list[int]]:
    """For each pool row ``queries[i]``, the ``count`` nearest pool rows (dot product).

    The pool rows listed in ``excluded[i]`` are never chosen for query ``i``; ties go to the
    lower row. ``pool`` is ``[N, D]`` (L2-normalised for cosine), ``queries`` ``[Q]`` row
    indices. Raises ``ValueError`` when some query has fewer than ``count`` rows left.
    """
    out: list[list[int]] = []
    for start in range(0, len(queries), chunk):
        stop = min(start + chunk, len(queries))
        scores = pool[queries[start:stop]] @ pool.T
        rows = [i for i, columns in enumerate(excluded[start:stop]) for _ in columns]
        columns = [column for columns in excluded[start:stop] for column in columns]
        scores[rows, columns] = float("-inf")
        best = torch.topk(scores, count, dim=1, sorted=True)
        if torch.isinf(best.values).any():
            short = start + int(torch.isinf(best.values).any(dim=1).nonzero()[0])
            raise ValueError(
                f"hard_negatives={count}: item {short} has only "
                f"{pool.shape[0] - len(set(excluded[short]))} candidates left after excluding "
                "its own answers; lower hard_negatives or add data"
            )
        out += best.indices.tolist()
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
    own = [row_of[c] for c in captions]
    nearest = nearest_rows(embed_texts(distinct), torch.tensor(own), count, [[i] for i in own])
    return [tuple(first_pair[j] for j in row) for row in nearest]


def attach_hard_negatives(
    dataset: Dataset, embedder: Callable[[TripletDataset], KeyEmbedder], count: int, run_dir: Path
) -> None:
    """Give every triplet of ``dataset`` its ``count`` mined negatives (in place).

    ``embedder(part)`` gives the key embedder for one :class:`TripletDataset` (each part
    resolves its own keys). The lists are read from ``run_dir/hard_negatives.json`` when it
    was written for the same triplets and count, else mined and written there.
    """
    parts = triplet_parts(dataset)
    lists = _saved_or_mined(
        run_dir,
        _fingerprint(
            count, [[(f"{t.reference}\0{t.text}", t.target) for t in p.triplets] for p in parts]
        ),
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
    encode: Callable[[Sequence], torch.Tensor],
    batch_size: int = 64,
    progress: bool = True,
    desc: str = "mining hard negatives",
) -> Callable[[Sequence], torch.Tensor]:
    """Items → L2-normalised ``[N, D]`` rows, ``encode`` run on ``batch_size`` items at a time."""

    @torch.no_grad()
    def embed(items: Sequence) -> torch.Tensor:
        batches = range(0, len(items), batch_size)
        out = []
        for start in tqdm(batches, desc=desc, disable=not progress):
            rows = encode(items[start : start + batch_size]).float()
            out.append(torch.nn.functional.normalize(rows, dim=-1).cpu())
        return torch.cat(out)

    return embed


def image_key_embedder(
    encode: Callable[[list], torch.Tensor],
    load_image: Callable[[str], object],
    batch_size: int = 64,
    progress: bool = True,
    desc: str = "mining hard negatives",
) -> KeyEmbedder:
    """A key embedder from an image encoder (``encode(images) -> [B, D]``) and a loader."""
    return batched_embedder(
        lambda keys: encode([load_image(key) for key in keys]), batch_size, progress, desc
    )


def triplet_parts(dataset: Dataset) -> list[TripletDataset]:
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
