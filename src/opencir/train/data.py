"""Training examples: triplets (with a labelled/generated mixture) and image–caption pairs.

Datasets return raw PIL images and strings; :class:`Collate` turns a list of them into model
inputs (pixels + token ids), so preprocessing runs in DataLoader workers. Batch order is a
pure function of ``(seed, step)``, which is what makes ``--resume`` reproduce the loss curve.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from PIL import Image
from torch.utils.data import Dataset, Sampler

from opencir.train.distributed import per_rank_batch
from opencir.train.text_noise import SynonymTable, noise_batch_texts

ImageLoader = Callable[[str], Image.Image]
# the batch fields of the image–caption pairs a cir step also trains on (``pair_loss_weight``)
PAIR_IMAGES, PAIR_TOKENS = "pair_image", "pair_tokens"
# pretraining's extras: hard negative captions per pair (``data.negative_caption_field``) and
# regions with their own captions (``data.region_field``); the batch fields they become
NEGATIVE_CAPTIONS, REGIONS = "negative_captions", "regions"
NEGATIVE_CAPTION_TOKENS = "negative_caption_tokens"
REGION_BOXES, REGION_IMAGES = "region_boxes", "region_images"
REGION_CAPTION_IDS, REGION_TOKENS = "region_caption_ids", "region_tokens"
# a region: its box (x0, y0, x1, y1, fractions of the image) and what it shows
Region = tuple[tuple[float, float, float, float], str]


def parse_regions(value: Any, where: str) -> list[Region]:
    """A ``data.region_field`` value checked: a list of ``{"box": [x0, y0, x1, y1], "caption"}``
    with ``0 <= x0 < x1 <= 1`` and ``0 <= y0 < y1 <= 1``; ``where`` names it in errors."""
    if not isinstance(value, list):
        raise ValueError(f"regions of {where}: expected a list, got {type(value).__name__}")
    regions = []
    for region in value:
        box, caption = (
            (region.get("box"), region.get("caption")) if isinstance(region, dict) else (None, None)
        )
        valid_box = (
            isinstance(box, list | tuple) and len(box) == 4
            and all(isinstance(v, int | float) for v in box)
            and 0 <= box[0] < box[2] <= 1 and 0 <= box[1] < box[3] <= 1
        )  # fmt: skip
        if not valid_box or not isinstance(caption, str) or not caption:
            raise ValueError(
                f"region of {where}: expected {{'box': [x0, y0, x1, y1] with 0 <= x0 < x1 <= 1 "
                f"and 0 <= y0 < y1 <= 1, 'caption': non-empty text}}, got {region!r}"
            )
        regions.append(((float(box[0]), float(box[1]), float(box[2]), float(box[3])), caption))
    return regions


@dataclass(frozen=True)
class TripletExample:
    """One training triplet; ``negatives`` are image keys used as its extra negatives."""

    reference: str
    text: str
    target: str
    negatives: tuple[str, ...] = ()


class TripletDataset(Dataset):
    """Triplets whose image keys are resolved by ``load_image``.

    With ``candidate_rows`` (key → row of a table of fixed target embeddings, see
    :mod:`opencir.train.fixed_targets`) an example carries its target's, reference's and
    negatives' rows instead of loading the target and negative images; the reference image
    is still loaded, for the query.
    """

    def __init__(self, triplets: Sequence[TripletExample], load_image: ImageLoader) -> None:
        if not triplets:
            raise ValueError("TripletDataset got no triplets: check the data.triplets files")
        self.triplets, self.load_image = list(triplets), load_image
        self.candidate_rows: dict[str, int] | None = None
        self.answer_rows: dict[tuple[str, str], tuple[int, ...]] = {}

    def __len__(self) -> int:
        return len(self.triplets)

    def __getitem__(self, index: int) -> dict[str, Any]:
        row = self.triplets[index]
        example = {"reference": self.load_image(row.reference), "text": row.text}
        rows = self.candidate_rows
        if rows is not None:
            example.update(reference_row=rows[row.reference], target_row=rows[row.target])
            example["answer_rows"] = self.answer_rows.get((row.reference, row.text), ())
            if row.negatives:
                example["negative_rows"] = [rows[key] for key in row.negatives]
            return example
        example["target"] = self.load_image(row.target)
        if row.negatives:
            example["negatives"] = [self.load_image(key) for key in row.negatives]
        return example


class PairDataset(Dataset):
    """Image–caption pairs for the image–text pretraining stage (captions only for ``lm``).

    ``extras`` maps an example field to one value per pair, in order: ``NEGATIVE_CAPTIONS``
    (captions that do not describe the pair's image: hard negatives of the image→text
    softmax, ``data.negative_caption_field``) and ``REGIONS`` (its ``(box, caption)`` list,
    ``data.region_field``).
    """

    def __init__(
        self,
        pairs: Sequence[tuple[str, str]],
        load_image: ImageLoader,
        with_images: bool = True,
        extras: dict[str, Sequence[Any]] | None = None,
    ) -> None:
        if not pairs:
            raise ValueError("PairDataset got no image–caption pairs: check data.pairs")
        extras = dict(extras or {})
        for name, values in extras.items():
            if len(values) != len(pairs):
                raise ValueError(
                    f"PairDataset got {len(values)} {name!r} values for {len(pairs)} pairs"
                )
        self.pairs, self.load_image, self.with_images = list(pairs), load_image, with_images
        self.extras = extras
        # per pair, indices of the pairs that come with it as extra negatives (hard_negatives)
        self.negatives: list[tuple[int, ...]] = []

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> dict[str, Any]:
        key, caption = self.pairs[index]
        if not self.with_images:
            return {"text": caption}
        example = {"image": self.load_image(key), "text": caption}
        example.update({name: values[index] for name, values in self.extras.items()})
        if self.negatives:
            extra = [self.pairs[i] for i in self.negatives[index]]
            example["negatives"] = [self.load_image(k) for k, _ in extra]
            example["negative_texts"] = [c for _, c in extra]
        return example


class MixtureSampler(Sampler[int]):
    """Deterministic, resumable batches over ``[generated..., labelled...]`` concatenated.

    Each global batch takes ``round(ratio·B)`` labelled and the rest generated examples,
    each source cycling through its own seeded permutation epoch after epoch. ``start_batch``
    skips batches already consumed, so a resumed run sees exactly the same batches.
    The examples of a global batch are split across ranks by ``rank::world``, an equal
    share each (:func:`~opencir.train.distributed.per_rank_batch`), whatever ``world`` is.
    """

    def __init__(
        self,
        n_generated: int,
        n_labelled: int,
        batch_size: int,
        ratio: float,
        seed: int,
        total_batches: int,
        start_batch: int = 0,
        rank: int = 0,
        world: int = 1,
    ) -> None:
        self.n_labelled_per_batch = round(ratio * batch_size) if n_labelled else 0
        if n_generated == 0 and self.n_labelled_per_batch < batch_size:
            raise ValueError(
                "no generated triplets but labelled_ratio < 1: nothing to fill batches"
            )
        self.sizes = (n_generated, n_labelled)
        self.batch_size, self.seed = batch_size, seed
        self.total, self.start = total_batches, start_batch
        self.rank, self.world = rank, world
        self.per_rank = per_rank_batch(batch_size, world)

    def _stream(self, source: int, per_batch: int, offset: int) -> Iterator[int]:
        """Indices of one source, consumed ``per_batch`` per batch, from batch ``self.start``."""
        size = self.sizes[source]
        position = self.start * per_batch
        epoch, within = divmod(position, size) if size else (0, 0)
        while True:
            order = list(range(size))
            random.Random(f"{self.seed}-{source}-{epoch}").shuffle(order)
            for index in order[within:]:
                yield offset + index
            epoch, within = epoch + 1, 0

    def __iter__(self) -> Iterator[int]:
        labelled_n = self.n_labelled_per_batch
        generated_n = self.batch_size - labelled_n
        generated = self._stream(0, generated_n, 0) if generated_n else iter(())
        labelled = self._stream(1, labelled_n, self.sizes[0]) if labelled_n else iter(())
        for _ in range(self.start, self.total):
            batch = [next(generated) for _ in range(generated_n)]
            batch += [next(labelled) for _ in range(labelled_n)]
            yield from batch[self.rank :: self.world]

    def __len__(self) -> int:
        return (self.total - self.start) * self.per_rank


class Collate:
    """List of examples → model inputs; picklable so it runs inside DataLoader workers.

    ``synonyms`` swaps words of the triplets' texts for synonyms at ``synonym_rate``, and
    ``word_dropout`` leaves words out (:mod:`opencir.train.text_noise`, drawn from ``seed``
    and the batch); captions of image–text pairs stay whole.
    """

    def __init__(
        self,
        preprocess: Callable,
        tokenizer: Callable[[Sequence[str]], dict],
        word_dropout: float = 0.0,
        seed: int = 0,
        synonyms: SynonymTable | None = None,
        synonym_rate: float = 0.0,
    ) -> None:
        self.preprocess, self.tokenizer = preprocess, tokenizer
        self.word_dropout, self.seed = word_dropout, seed
        self.synonyms, self.synonym_rate = synonyms, synonym_rate

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        batch: dict[str, Any] = {}
        for field in ("reference", "target", "image"):
            if field in examples[0]:
                batch[field] = self.preprocess([e[field] for e in examples])
        if "negatives" in examples[0]:  # the same count per example: [B·n] images, row-major
            batch["negatives"] = self.preprocess([im for e in examples for im in e["negatives"]])
        for field in ("reference_row", "target_row"):  # rows of fixed target embeddings
            if field in examples[0]:
                batch[f"{field}s"] = torch.tensor([e[field] for e in examples])
        if "negative_rows" in examples[0]:
            batch["negative_rows"] = torch.tensor([r for e in examples for r in e["negative_rows"]])
        if "answer_rows" in examples[0]:  # [B, most answers], padded with the example's target
            widest = max(len(e["answer_rows"]) for e in examples)
            batch["answer_rows"] = torch.tensor(
                [[*e["answer_rows"], *[e["target_row"]] * (widest + 1 - len(e["answer_rows"]))]
                 for e in examples]
            )  # fmt: skip
        texts = [e["text"] for e in examples]
        if "reference" in examples[0]:
            texts = noise_batch_texts(
                texts, self.seed, self.word_dropout, self.synonyms, self.synonym_rate
            )
        # pretraining's mined pairs: their captions follow the batch's, in "negatives" order
        texts += [text for e in examples for text in e.get("negative_texts", ())]
        batch["tokens"] = self.tokenizer(texts)
        if NEGATIVE_CAPTIONS in examples[0]:  # captions matching no image, any number each
            negatives = [text for e in examples for text in e[NEGATIVE_CAPTIONS]]
            batch[NEGATIVE_CAPTION_TOKENS] = self.tokenizer(negatives)
        if REGIONS in examples[0]:
            batch.update(self._regions([e[REGIONS] for e in examples]))
        return batch

    def _regions(self, per_example: list[list[Region]]) -> dict[str, Any]:
        """Boxes ``[R, 4]``, the example each comes from, and each one's index into the
        batch's distinct region captions (tokenised once each)."""
        captions: dict[str, int] = {}
        rows = [(i, box, captions.setdefault(text, len(captions)))
                for i, regions in enumerate(per_example) for box, text in regions]  # fmt: skip
        return {
            REGION_BOXES: torch.tensor([box for _, box, _ in rows], dtype=torch.float32),
            REGION_IMAGES: torch.tensor([i for i, _, _ in rows]),
            REGION_CAPTION_IDS: torch.tensor([c for _, _, c in rows]),
            REGION_TOKENS: self.tokenizer(list(captions)),
        }


def move_to(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    """Move every tensor of a (nested) batch dict to ``device``."""
    moved: dict[str, Any] = {}
    for key, value in batch.items():
        if isinstance(value, torch.Tensor):
            moved[key] = value.to(device, non_blocking=True)
        elif isinstance(value, dict):
            moved[key] = move_to(value, device)
        else:
            moved[key] = value
    return moved
