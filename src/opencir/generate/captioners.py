"""Captioners: sidecar text, an OpenAI-compatible vision endpoint, or a local HF model.

All offer ``caption_many(jobs) -> outcomes`` (async) plus ``provenance()`` and a cache
namespace that changes whenever the model, the prompt or a setting that alters the answer
changes. The runner consults the cache before calling them.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any

from opencir.data.collections import get_field
from opencir.generate.cache import local_model_digest
from opencir.generate.client import ChatClient, EndpointConfig, RequestError, user_content
from opencir.generate.jobs import ImageJob, Outcome, map_batches
from opencir.generate.prompts import CAPTION_PROMPT, prompt_hash

log = logging.getLogger(__name__)

CAPTIONERS = ("sidecar", "openai", "hf", "none")
SIDECAR_FIELDS = ("caption", "alt_text", "text", "txt")


@dataclass(frozen=True)
class CaptionerConfig:
    """Which captioner, and its settings.

    ``field``: the sidecar metadata field (``"auto"``: the first of caption, alt_text, text).
    ``endpoint``: for ``openai``. ``hf_model`` (hub id or folder), ``device``, ``batch_size``,
    ``max_new_tokens`` and ``prompt_mode`` (``auto``/``none``/``prefix``/``chat``) for ``hf``.
    """

    kind: str = "sidecar"
    field: str = "auto"
    prompt: str = CAPTION_PROMPT
    endpoint: EndpointConfig | None = None
    hf_model: str | None = None
    device: str = "cpu"
    batch_size: int = 8
    max_new_tokens: int = 60
    prompt_mode: str = "auto"

    def __post_init__(self) -> None:
        if self.kind not in CAPTIONERS:
            raise ValueError(f"captioner must be one of {CAPTIONERS}, got {self.kind!r}")
        if self.kind == "openai" and self.endpoint is None:
            raise ValueError("the openai captioner needs an endpoint (--endpoint, --caption-model)")
        if self.kind == "hf" and not self.hf_model:
            raise ValueError("the hf captioner needs a model (--caption-model HUB_ID_OR_DIR)")
        if self.prompt_mode not in ("auto", "none", "prefix", "chat"):
            raise ValueError(
                f"prompt_mode must be auto, none, prefix or chat, got {self.prompt_mode!r}"
            )


class Captioner:
    """Base: subclasses implement :meth:`caption_many`."""

    kind = "none"

    def provenance(self) -> dict[str, Any]:
        return {"kind": self.kind}

    def cache_namespace(self) -> str | None:
        """Cache key prefix; ``None`` when answers are free (no caching)."""
        return None

    async def caption_many(self, jobs: Sequence[ImageJob]) -> list[Outcome]:
        raise NotImplementedError

    async def aclose(self) -> None:
        return None


class SidecarCaptioner(Captioner):
    """Captions that came with the images (a ``.txt``, a manifest field such as ``alt_text``)."""

    kind = "sidecar"

    def __init__(self, field: str = "auto") -> None:
        self.field = field

    def provenance(self) -> dict[str, Any]:
        return {"kind": self.kind, "field": self.field}

    def caption(self, meta: Mapping[str, Any]) -> str | None:
        names = SIDECAR_FIELDS if self.field == "auto" else (self.field,)
        for name in names:
            value = get_field(meta, name)
            if isinstance(value, str) and value.strip():
                return value.strip()
        return None

    async def caption_many(self, jobs: Sequence[ImageJob]) -> list[Outcome]:
        outcomes = []
        for job in jobs:
            text = self.caption(job.meta)
            wanted = "caption, alt_text or text" if self.field == "auto" else self.field
            outcomes.append(
                Outcome.ok(text, attempts=0)
                if text
                else Outcome.failed("no_caption", f"no {wanted} field")
            )
        return outcomes


class OpenAICaptioner(Captioner):
    """A vision model behind an OpenAI-compatible endpoint; the image goes as a data URL."""

    kind = "openai"

    def __init__(self, endpoint: EndpointConfig, prompt: str = CAPTION_PROMPT) -> None:
        self.endpoint, self.prompt = endpoint, prompt
        self.client = ChatClient(endpoint)

    def provenance(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            **self.endpoint.provenance(),
            "prompt_sha": prompt_hash(self.prompt),
        }

    def cache_namespace(self) -> str:
        settings = repr(sorted(self.endpoint.provenance().items()))
        return f"caption:openai:{self.endpoint.model}:{prompt_hash(self.prompt, settings)}"

    async def caption_one(self, job: ImageJob) -> Outcome:
        assert job.image is not None
        # JPEG + base64 of the image takes milliseconds: off the loop, other requests flow on
        content = await asyncio.to_thread(
            user_content, self.prompt, [job.image], self.endpoint.image_max_side
        )
        try:
            answer = await self.client.complete(content)
        except RequestError as error:
            return Outcome.failed(error.reason, error.detail, error.usage, error.attempts)
        text = " ".join(answer.text.split())
        if not text:
            return Outcome.failed(
                "empty_caption", "the model answered nothing", answer.usage, answer.attempts
            )
        return Outcome.ok(text, answer.usage, answer.attempts)

    async def caption_many(self, jobs: Sequence[ImageJob]) -> list[Outcome]:
        return list(await asyncio.gather(*(self.caption_one(job) for job in jobs)))

    async def aclose(self) -> None:
        await self.client.aclose()


class HFCaptioner(Captioner):
    """A local Hugging Face image-to-text model (BLIP, GIT, ViT-GPT2, SmolVLM, LLaVA, ...).

    ``prompt_mode``: ``none`` for pure captioners, ``prefix`` to give the prompt as a text
    prefix (BLIP), ``chat`` for chat VLMs (the processor's chat template); ``auto`` picks
    ``chat`` when the processor has a chat template, else ``none``. Runs in a worker thread,
    one batch at a time, so the event loop keeps serving the other stages.
    """

    kind = "hf"

    def __init__(self, config: CaptionerConfig) -> None:
        self.config = config
        self._model: Any = None
        self._processor: Any = None
        self._lock = threading.Lock()

    @cached_property
    def weights(self) -> str | None:
        """A hash of the model folder's files (``None`` for a hub id, named by its id)."""
        return local_model_digest(self.config.hf_model)

    def provenance(self) -> dict[str, Any]:
        c = self.config
        return {
            "kind": self.kind,
            "model": c.hf_model,
            "weights": self.weights,
            "prompt_mode": c.prompt_mode,
            "max_new_tokens": c.max_new_tokens,
            "prompt_sha": prompt_hash(c.prompt),
        }

    def cache_namespace(self) -> str:
        c = self.config
        settings = f"{c.prompt_mode}:{c.max_new_tokens}:{self.weights}"
        return f"caption:hf:{c.hf_model}:{prompt_hash(c.prompt, settings)}"

    def _load(self) -> tuple[Any, Any]:
        if self._model is None:
            from transformers import AutoModelForImageTextToText

            name = self.config.hf_model
            log.info("loading captioning model %s on %s", name, self.config.device)
            self._processor = load_processor(name)
            self._model = (
                AutoModelForImageTextToText.from_pretrained(name).to(self.config.device).eval()
            )
        return self._model, self._processor

    def _mode(self, processor: Any) -> str:
        if self.config.prompt_mode != "auto":
            return self.config.prompt_mode
        return "chat" if getattr(processor, "chat_template", None) else "none"

    def _inputs(self, processor: Any, images: list[Any]) -> Any:
        mode = self._mode(processor)
        if mode == "none":
            return processor(images=images, return_tensors="pt")
        if mode == "prefix":
            return processor(
                images=images, text=[self.config.prompt] * len(images), return_tensors="pt"
            )
        message = [
            {
                "role": "user",
                "content": [{"type": "image"}, {"type": "text", "text": self.config.prompt}],
            }
        ]
        text = processor.apply_chat_template(message, add_generation_prompt=True)
        return processor(
            images=[[im] for im in images],
            text=[text] * len(images),
            return_tensors="pt",
            padding=True,
        )

    def generate(self, images: list[Any]) -> list[str]:
        """Captions for a batch of PIL images (blocking)."""
        import torch

        with self._lock, torch.inference_mode():
            model, processor = self._load()
            inputs = self._inputs(processor, images).to(self.config.device)
            output = model.generate(
                **inputs, max_new_tokens=self.config.max_new_tokens, do_sample=False
            )
            if not model.config.is_encoder_decoder and "input_ids" in inputs:
                output = output[:, inputs["input_ids"].shape[1] :]  # keep the new tokens only
            decode = getattr(processor, "batch_decode", None) or processor.tokenizer.batch_decode
            return [" ".join(t.split()) for t in decode(output, skip_special_tokens=True)]

    async def caption_many(self, jobs: Sequence[ImageJob]) -> list[Outcome]:
        images = [job.image for job in jobs]
        texts = await map_batches(images, self.config.batch_size, self.generate, "captioning")
        return [_caption_outcome(text) for text in texts]


def _caption_outcome(text: str | Outcome) -> Outcome:
    if isinstance(text, Outcome):
        return text
    return Outcome.ok(text) if text else Outcome.failed("empty_caption")


class PairedProcessor:
    """An image processor and a tokenizer acting as one processor (encoder-decoder captioners
    such as ViT-GPT2 ship the two separately)."""

    chat_template = None

    def __init__(self, image_processor: Any, tokenizer: Any) -> None:
        self.image_processor, self.tokenizer = image_processor, tokenizer

    def __call__(
        self, images: Any, text: Any = None, return_tensors: str = "pt", **kwargs: Any
    ) -> Any:
        features = self.image_processor(images=images, return_tensors=return_tensors)
        if text is not None:
            features.update(self.tokenizer(text, return_tensors=return_tensors, padding=True))
        return features

    def batch_decode(self, *args: Any, **kwargs: Any) -> list[str]:
        return self.tokenizer.batch_decode(*args, **kwargs)


def load_processor(name: str) -> Any:
    """``AutoProcessor``, or an image processor + tokenizer pair when that is all there is."""
    from transformers import AutoImageProcessor, AutoProcessor, AutoTokenizer

    processor = AutoProcessor.from_pretrained(name)
    if hasattr(processor, "image_processor"):
        return processor
    return PairedProcessor(
        AutoImageProcessor.from_pretrained(name), AutoTokenizer.from_pretrained(name)
    )


def build_captioner(config: CaptionerConfig) -> Captioner:
    """The captioner a config asks for."""
    if config.kind == "sidecar":
        return SidecarCaptioner(config.field)
    if config.kind == "openai":
        assert config.endpoint is not None
        return OpenAICaptioner(config.endpoint, config.prompt)
    if config.kind == "hf":
        return HFCaptioner(config)
    return Captioner()
