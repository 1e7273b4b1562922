"""``--writer hf``: a local causal LM writes the change, in-process, batched and greedy.

Meant for a writer tuned with ``opencir train`` (``stage: writer``): its ``final/`` folder is
the model. The request is the same as the ``llm`` writer's (the reformulation prompt in the
model's chat template), so a tuned writer answers here as it would behind a server. Greedy
decoding gives the same answer every time, so a rejected answer is not asked again.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from functools import cached_property
from typing import Any

from opencir.generate.causal_lm import (
    generate_answers,
    load_causal_lm,
    load_tokenizer,
    resolve_model_source,
)
from opencir.generate.jobs import Outcome, PairJob, map_batches
from opencir.generate.prompts import REFORMULATION_PROMPT, prompt_hash
from opencir.generate.validation import Rejection, validate_change
from opencir.generate.writers import ChangeWriter, WriterConfig, change_request


class HFWriter(ChangeWriter):
    """Two captions → change text with a local model; batches run in a worker thread."""

    kind = "hf"

    def __init__(self, config: WriterConfig) -> None:
        self.config = config
        self.prompt = config.prompt or REFORMULATION_PROMPT
        self._model: Any = None
        self._tokenizer: Any = None
        self._lock = threading.Lock()

    @cached_property
    def weights(self) -> str:
        """A hash of the model's files: a shipped name or folder re-tuned in place is a new
        model to the answer cache."""
        assert self.config.hf_model is not None
        return resolve_model_source(self.config.hf_model).digest()

    def provenance(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "model": self.config.hf_model,
            "weights": self.weights,
            "decoding": "greedy",
            "max_new_tokens": self.config.max_new_tokens,
            "prompt_sha": prompt_hash(self.prompt, str(self.config.validation.max_words)),
        }

    def cache_namespace(self) -> str:
        settings = repr(sorted(self.provenance().items()))
        return f"change:hf:{self.config.hf_model}:{prompt_hash(settings)}"

    def _load(self) -> tuple[Any, Any]:
        if self._model is None:
            assert self.config.hf_model is not None
            self._tokenizer = load_tokenizer(self.config.hf_model)
            model = load_causal_lm(self.config.hf_model)
            self._model = model.to(self.config.device).eval()
        return self._model, self._tokenizer

    def answer(self, jobs: Sequence[PairJob]) -> list[str]:
        """Raw answers for a batch of pairs (blocking)."""
        with self._lock:
            model, tokenizer = self._load()
            max_words = self.config.validation.max_words
            requests = [change_request(job, self.prompt, max_words) for job in jobs]
            return generate_answers(model, tokenizer, requests, self.config.max_new_tokens)

    def _outcome(self, answer: str | Outcome, job: PairJob) -> Outcome:
        if isinstance(answer, Outcome):  # the batch failed
            return answer
        result = validate_change(answer, self.config.validation, job.captions)
        if isinstance(result, Rejection):
            return Outcome.rejected(result.reason, result.text[:300])
        return Outcome.ok(result)

    async def write_many(self, jobs: Sequence[PairJob]) -> list[Outcome]:
        answers = await map_batches(jobs, self.config.batch_size, self.answer, "writer")
        return [self._outcome(a, job) for a, job in zip(answers, jobs, strict=True)]
