"""A training-free CIR baseline in the manner of CIReVL, built from the generation backends.

Caption the reference image (any captioner; the sidecar captioner finds the reference's own
caption in a collection's metadata by image content), have an LLM rewrite the caption with the
requested modification, and retrieve by text: the query is the text-tower embedding of the
rewritten caption, targets are the same tower's image embeddings. It offers
``encode_query(images, texts)`` / ``encode_target(images)``, so ``opencir eval`` and the
index treat it like any model. Captions and rewrites are cached (in memory, or in a folder
shared across runs), so a second evaluation pays for nothing.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import threading
from collections.abc import Coroutine, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import torch
import torch.nn.functional as F
from PIL import Image
from tqdm.auto import tqdm

from opencir.data.collections import CollectionSpec, ImageCollection, open_collection
from opencir.generate.cache import ResultCache
from opencir.generate.captioners import Captioner, CaptionerConfig, build_captioner
from opencir.generate.client import ChatClient, EndpointConfig, RequestError
from opencir.generate.jobs import ImageJob
from opencir.generate.prompts import REWRITE_PROMPT, fill, prompt_hash
from opencir.generate.validation import clean_answer

log = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass(frozen=True)
class CIReVLConfig:
    """A CIReVL retriever: an OpenCIR model (name or checkpoint) for its towers, a captioner
    (``openai``, ``hf``, or ``sidecar`` with ``sidecar``: a collection — path or
    :class:`CollectionSpec` dict — whose metadata caption the reference images) and an LLM
    endpoint for the rewrite."""

    model: str
    captioner: CaptionerConfig
    rewriter: EndpointConfig
    rewrite_prompt: str = REWRITE_PROMPT
    cache_dir: str | None = None
    sidecar: str | Mapping[str, Any] | None = None

    def __post_init__(self) -> None:
        if self.captioner.kind == "sidecar" and self.sidecar is None:
            raise ValueError(
                "the sidecar captioner needs 'sidecar': a collection (path or spec) whose "
                "metadata caption the reference images, e.g. a world's images.jsonl"
            )
        if self.captioner.kind == "none":
            raise ValueError("CIReVL needs a captioner: openai, hf or sidecar, got 'none'")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CIReVLConfig:
        """From JSON: ``{"model", "captioner": {kind, endpoint, ...}, "rewriter": {...}}``."""
        try:
            captioner = dict(data["captioner"])
            if captioner.get("endpoint") is not None:
                captioner["endpoint"] = EndpointConfig(**captioner["endpoint"])
            return cls(
                model=data["model"],
                captioner=CaptionerConfig(**captioner),
                rewriter=EndpointConfig(**data["rewriter"]),
                rewrite_prompt=data.get("rewrite_prompt", REWRITE_PROMPT),
                cache_dir=data.get("cache_dir"),
                sidecar=data.get("sidecar"),
            )
        except (KeyError, TypeError) as error:
            raise ValueError(
                f"bad CIReVL config: {error} (need model, captioner, rewriter)"
            ) from error


def load_cirevl(path: str | Path, progress: bool = True) -> CIReVL:
    """A CIReVL retriever from a JSON config file (see :class:`CIReVLConfig`);
    ``progress`` shows a bar while sidecar captions are indexed."""
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    return CIReVL.from_config(CIReVLConfig.from_dict(data), progress)


def run_sync(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine from sync code, also when the caller already runs an event loop."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coroutine)
    result: list[T] = []
    errors: list[BaseException] = []

    def target() -> None:
        try:
            result.append(asyncio.run(coroutine))
        except BaseException as error:
            errors.append(error)

    thread = threading.Thread(target=target)
    thread.start()
    thread.join()
    if errors:
        raise errors[0]
    return result[0]


def _sidecar_metadata(
    source: str | Mapping[str, Any] | None, progress: bool
) -> MetadataByContent | None:
    if source is None:
        return None
    spec = CollectionSpec.from_dict(source) if isinstance(source, Mapping) else source
    return MetadataByContent(open_collection(spec), progress)


def find_tower(model: torch.nn.Module) -> Any:
    """The model's dual (image + text) tower: the one that embeds both modalities."""
    from opencir.models.backbones import DualTower

    for module in model.modules():
        if isinstance(module, DualTower):
            return module
    raise ValueError(f"{type(model).__name__} has no image/text tower (DualTower) to retrieve with")


def image_hash(image: Image.Image) -> str:
    digest = hashlib.sha256(f"{image.mode}{image.size}".encode())
    digest.update(image.tobytes())
    return digest.hexdigest()[:32]


class MetadataByContent:
    """A collection's per-image metadata, found by the decoded image's content.

    A retriever is handed pixels, not keys; this lets the sidecar captioner find the caption
    that came with a reference image (a world's alt text, a ``.txt`` beside a photo). The
    collection is indexed on first use (every image decoded once); an image it lacks has no
    metadata, so its caption fails and the query falls back to its modification text.
    """

    def __init__(self, collection: ImageCollection, progress: bool = True) -> None:
        self.collection = collection
        self.progress = progress
        self._by_hash: dict[str, Mapping[str, Any]] | None = None

    def __call__(self, sha: str) -> Mapping[str, Any]:
        if self._by_hash is None:
            self._by_hash = self._index()
        return self._by_hash.get(sha, {})

    def _index(self) -> dict[str, Mapping[str, Any]]:
        by_hash: dict[str, Mapping[str, Any]] = {}
        items = self.collection.items()
        for item in tqdm(items, desc="sidecar captions", unit="img", disable=not self.progress):
            by_hash.setdefault(image_hash(self.collection.load(item.key)), item.meta)
        log.info("sidecar: %d images of %s indexed", len(items), self.collection.spec.path)
        return by_hash

    def describe(self) -> dict[str, Any]:
        return self.collection.describe()


class CIReVL:
    """Caption → rewrite → text retrieval, behind the :class:`~opencir.models.Retriever` API."""

    def __init__(
        self,
        model: Any,
        captioner: Captioner,
        rewriter: ChatClient,
        rewrite_prompt: str = REWRITE_PROMPT,
        cache: ResultCache | None = None,
        metadata: MetadataByContent | None = None,
    ) -> None:
        self.model = model.eval()
        self.tower = find_tower(model)
        self.captioner, self.rewriter, self.rewrite_prompt = captioner, rewriter, rewrite_prompt
        self.cache = cache if cache is not None else ResultCache(None)  # an empty cache is falsy
        self.metadata = metadata
        self.fallbacks = 0

    @classmethod
    def from_config(cls, config: CIReVLConfig, progress: bool = True) -> CIReVL:
        from opencir.models.registry import load_model

        return cls(
            load_model(config.model),
            build_captioner(config.captioner),
            ChatClient(config.rewriter),
            config.rewrite_prompt,
            ResultCache(config.cache_dir),
            _sidecar_metadata(config.sidecar, progress),
        )

    def fingerprint(self) -> str:
        """Model weights + captioner + rewriter + prompt: equal fingerprints, equal rankings."""
        from opencir.models.base import retriever_fingerprint

        parts = [
            retriever_fingerprint(self.model),
            json.dumps(self.captioner.provenance(), sort_keys=True),
            json.dumps(self.rewriter.config.provenance(), sort_keys=True),
            self.rewrite_prompt,
        ]
        if self.metadata is not None:
            parts.append(json.dumps(self.metadata.describe(), sort_keys=True))
        return prompt_hash(*parts)

    # ------------------------------------------------------------------ text side

    async def _captions(self, images: Sequence[Image.Image]) -> list[str]:
        jobs = [self._job(n, im.convert("RGB")) for n, im in enumerate(images)]
        namespace = self.captioner.cache_namespace()  # None: free captions, not cached
        texts: dict[int, str] = {}
        missing = []
        for n, job in enumerate(jobs):
            hit = self.cache.get(f"{namespace}:{job.sha}") if namespace else None
            if hit is not None:
                texts[n] = hit
            else:
                missing.append((n, job))
        outcomes = await self.captioner.caption_many([job for _, job in missing])
        for (n, job), outcome in zip(missing, outcomes, strict=True):
            texts[n] = outcome.text or ""
            if outcome.status == "ok" and namespace:
                self.cache.put(f"{namespace}:{job.sha}", outcome.text)
            elif outcome.status != "ok":
                log.warning(
                    "caption failed (%s): retrieving by the modification text alone", outcome.reason
                )
        return [texts[n] for n in range(len(jobs))]

    def _job(self, n: int, image: Image.Image) -> ImageJob:
        sha = image_hash(image)
        meta = self.metadata(sha) if self.metadata is not None else {}
        return ImageJob(key=str(n), meta=meta, sha=sha, image=image)

    async def _rewrite_one(self, caption: str, modification: str) -> str:
        prompt = fill(self.rewrite_prompt, caption=caption, modification=modification)
        key = f"rewrite:{self.rewriter.config.model}:{prompt_hash(prompt)}"
        hit = self.cache.get(key)
        if hit is not None:
            return hit
        try:
            answer = await self.rewriter.complete(prompt)
            text = clean_answer(answer.text)
        except RequestError as error:
            log.warning("rewrite failed (%s): using caption + modification", error.reason)
            text = ""
        if not text:
            self.fallbacks += 1
            return f"{caption} {modification}".strip()
        self.cache.put(key, text)
        return text

    async def _queries(self, images: Sequence[Image.Image], texts: Sequence[str]) -> list[str]:
        try:
            captions = await self._captions(images)
            return list(
                await asyncio.gather(
                    *(self._rewrite_one(c, t) for c, t in zip(captions, texts, strict=True))
                )
            )
        finally:
            await self.captioner.aclose()
            await self.rewriter.aclose()

    def rewritten(self, images: Sequence[Image.Image], texts: Sequence[str]) -> list[str]:
        """The target descriptions the queries are embedded from."""
        if isinstance(texts, str) or len(images) != len(texts):
            raise ValueError(
                f"need one text per image, got {len(images)} images and {len(texts)} texts"
            )
        return run_sync(self._queries(images, texts))

    # ------------------------------------------------------------------ retrieval API

    @torch.inference_mode()
    def encode_text(self, texts: Sequence[str]) -> torch.Tensor:
        tokens = self.model.tokenize(list(texts))
        pooled = self.tower.encode_text(tokens["input_ids"], tokens["attention_mask"]).pooled
        return F.normalize(pooled.float(), dim=-1)

    def encode_query(self, images: Sequence[Image.Image], texts: Sequence[str]) -> torch.Tensor:
        """Text embeddings of the rewritten captions, ``[B, D]``, L2-normalised."""
        return self.encode_text(self.rewritten(images, texts))

    @torch.inference_mode()
    def encode_target(self, images: Sequence[Image.Image] | torch.Tensor) -> torch.Tensor:
        """Image embeddings from the same tower, ``[B, D]``, L2-normalised."""
        pixels = self.model.pixels(images)
        return F.normalize(self.tower.encode_image(pixels).float(), dim=-1)
