"""Change writers: an LLM over two captions (S1), a pair vision model (S3), or templates.

Every answer is cleaned and validated (:mod:`opencir.generate.validation`); a rejected answer
is asked again (``reject_retries`` times, with a new seed and some temperature) and, if it
never passes, recorded as ``rejected`` with its reason.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from opencir.data.collections import get_field
from opencir.generate import templates
from opencir.generate.client import ChatClient, EndpointConfig, RequestError, Usage, user_content
from opencir.generate.jobs import Outcome, PairJob, stable_seed
from opencir.generate.prompts import (
    PAIR_PROMPT,
    REFORMULATION_PROMPT,
    fill,
    prompt_hash,
    reformulation_request,
)
from opencir.generate.validation import Rejection, ValidationConfig, validate_change

WRITERS = ("llm", "pair-vlm", "template", "hf")
RETRY_TEMPERATURE = 0.7


@dataclass(frozen=True)
class WriterConfig:
    """Which writer, and its settings.

    ``prompt``: the template (``None``: the writer's default; the LLM writer's default is the
    seed's reformulation prompt with ``{caption_a}``/``{caption_b}``; the pair writer's takes
    ``{max_words}``). ``attributes_field``: metadata the template writer compares first.
    ``hf_model``: the local causal LM of the ``hf`` writer (a directory, e.g. a tuned writer's
    ``final/`` or ``adapter/``, a GGUF, or a shipped writer's name such as ``shapes-writer``),
    run on ``device`` in batches of ``batch_size``, greedy.
    """

    kind: str = "llm"
    endpoint: EndpointConfig | None = None
    prompt: str | None = None
    validation: ValidationConfig = field(default_factory=ValidationConfig)
    reject_retries: int = 1
    attributes_field: str = "attributes"
    hf_model: str | None = None
    device: str = "cpu"
    batch_size: int = 8
    max_new_tokens: int = 32

    def __post_init__(self) -> None:
        if self.kind not in WRITERS:
            raise ValueError(f"writer must be one of {WRITERS}, got {self.kind!r}")
        if self.kind in ("llm", "pair-vlm") and self.endpoint is None:
            raise ValueError(
                f"the {self.kind} writer needs an endpoint (--endpoint, --writer-model)"
            )
        if self.kind == "hf" and not self.hf_model:
            raise ValueError(
                "the hf writer needs a local model (--writer-model DIR, .gguf or a shipped "
                "writer such as shapes-writer)"
            )
        if self.reject_retries < 0:
            raise ValueError(f"reject_retries must be >= 0, got {self.reject_retries}")
        if self.batch_size < 1 or self.max_new_tokens < 1:
            raise ValueError("the writer's batch_size and max_new_tokens must be >= 1")


class ChangeWriter:
    """Base: ``write_many(pair jobs) -> outcomes``; captions needed or not."""

    kind = "none"
    needs_captions = True
    captions_optional = False

    def provenance(self) -> dict[str, Any]:
        return {"kind": self.kind}

    def cache_namespace(self) -> str | None:
        return None

    async def write_many(self, jobs: Sequence[PairJob]) -> list[Outcome]:
        raise NotImplementedError

    async def aclose(self) -> None:
        return None


class _ModelWriter(ChangeWriter):
    """Shared ask → validate → maybe ask again loop of the two model writers."""

    default_prompt = ""
    sends_images = False

    def __init__(self, config: WriterConfig, seed: int = 0) -> None:
        assert config.endpoint is not None
        self.config, self.seed = config, seed
        self.endpoint = config.endpoint
        self.prompt = config.prompt or self.default_prompt
        self.client = ChatClient(config.endpoint)

    def provenance(self) -> dict[str, Any]:
        return {"kind": self.kind, **self.endpoint.provenance(), "prompt_sha": self._prompt_sha()}

    def _prompt_sha(self) -> str:
        v = self.config.validation
        return prompt_hash(self.prompt, f"{v.max_words}:{v.min_words}:{self.config.reject_retries}")

    def cache_namespace(self) -> str:
        settings = repr(sorted(self.endpoint.provenance().items()))
        return (
            f"change:{self.kind}:{self.endpoint.model}:{self._prompt_sha()}:{prompt_hash(settings)}"
        )

    def content(self, job: PairJob) -> Any:
        raise NotImplementedError

    async def write_one(self, job: PairJob) -> Outcome:
        # encoding images takes milliseconds: off the event loop, other requests flow on
        content = (
            await asyncio.to_thread(self.content, job) if self.sends_images else self.content(job)
        )
        usage, last = Usage(), Rejection("empty", "")
        seed = stable_seed(self.seed, job.pair.reference, job.pair.target)
        for attempt in range(self.config.reject_retries + 1):
            temperature = (
                None if attempt == 0 else max(self.endpoint.temperature, RETRY_TEMPERATURE)
            )
            try:
                answer = await self.client.complete(
                    content, seed=seed + attempt, temperature=temperature
                )
            except RequestError as error:
                return Outcome.failed(error.reason, error.detail, usage + error.usage, attempt + 1)
            usage = usage + answer.usage
            result = validate_change(answer.text, self.config.validation, job.captions)
            if isinstance(result, str):
                return Outcome.ok(result, usage, attempt + 1)
            last = result
        return Outcome.rejected(last.reason, last.text[:300], usage, self.config.reject_retries + 1)

    async def write_many(self, jobs: Sequence[PairJob]) -> list[Outcome]:
        return list(await asyncio.gather(*(self.write_one(job) for job in jobs)))

    async def aclose(self) -> None:
        await self.client.aclose()


class LLMWriter(_ModelWriter):
    """Seed 002: an LLM reads the two captions and writes the change (≤12 words)."""

    kind = "llm"
    default_prompt = REFORMULATION_PROMPT

    def content(self, job: PairJob) -> str:
        return change_request(job, self.prompt, self.config.validation.max_words)


def change_request(job: PairJob, template: str, max_words: int) -> str:
    """The request for a pair's change from its two captions (the ``llm`` and ``hf`` writers)."""
    return reformulation_request(
        job.reference_caption or "", job.target_caption or "", template, max_words
    )


class PairVLMWriter(_ModelWriter):
    """Seed 001's "Spoter": one request carrying both images, asking for the difference."""

    kind = "pair-vlm"
    default_prompt = PAIR_PROMPT
    needs_captions = False
    sends_images = True

    def content(self, job: PairJob) -> Any:
        assert job.reference.image is not None and job.target.image is not None
        text = fill(self.prompt, max_words=str(self.config.validation.max_words))
        images = [job.reference.image, job.target.image]
        return user_content(text, images, self.endpoint.image_max_side)


class TemplateWriter(ChangeWriter):
    """No model: attribute metadata first, else a word diff of the captions."""

    kind = "template"
    captions_optional = True

    def __init__(self, config: WriterConfig) -> None:
        self.config = config

    def provenance(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "attributes_field": self.config.attributes_field,
            "max_words": self.config.validation.max_words,
        }

    def clauses(self, job: PairJob) -> tuple[list[str], str]:
        variant = stable_seed(job.pair.reference, job.pair.target)
        field = self.config.attributes_field
        old, new = get_field(job.reference.meta, field), get_field(job.target.meta, field)
        if isinstance(old, dict) and isinstance(new, dict):
            return templates.attribute_changes(old, new, variant), "attributes"
        if job.reference_caption and job.target_caption:
            return templates.caption_changes(
                job.reference_caption, job.target_caption, variant
            ), "captions"
        return [], "nothing"

    def write(self, job: PairJob) -> Outcome:
        clauses, basis = self.clauses(job)
        if basis == "nothing":
            return Outcome.failed("no_caption", "neither attributes nor two captions", attempts=0)
        if not clauses:
            return Outcome.rejected("no_difference", f"the two {basis} are the same", attempts=0)
        text = templates.join_clauses(clauses, self.config.validation.max_words)
        result = validate_change(text, self.config.validation)
        if isinstance(result, Rejection):
            return Outcome.rejected(result.reason, result.text, attempts=0)
        return Outcome.ok(result, attempts=0)

    async def write_many(self, jobs: Sequence[PairJob]) -> list[Outcome]:
        return [self.write(job) for job in jobs]


def build_writer(config: WriterConfig, seed: int = 0) -> ChangeWriter:
    """The change writer a config asks for."""
    if config.kind == "llm":
        return LLMWriter(config, seed)
    if config.kind == "pair-vlm":
        return PairVLMWriter(config, seed)
    if config.kind == "hf":
        from opencir.generate.hf_writer import HFWriter

        return HFWriter(config)
    return TemplateWriter(config)
