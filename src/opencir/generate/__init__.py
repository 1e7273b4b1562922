"""Triplet generation from unannotated images (S1 and S3), resumable, in-process or on Ray Data.

pairs (random / class / related) → captions (sidecar / OpenAI-compatible / Hugging Face)
→ change text (LLM over captions / pair vision model / templates) → validated triplets in
atomically committed shards → ``triplets.jsonl`` + ``report.json``. Start at
:func:`generate` with a :class:`GenerateConfig`; ``docs/GENERATE.md`` shows real runs.
"""

from opencir.generate.captioners import CaptionerConfig, build_captioner
from opencir.generate.cirevl import CIReVL, CIReVLConfig, load_cirevl
from opencir.generate.client import ChatClient, EndpointConfig, RequestError
from opencir.generate.pipeline import RunReport, generate
from opencir.generate.prompts import CAPTION_PROMPT, PAIR_PROMPT, REFORMULATION_PROMPT
from opencir.generate.sampling import Pair, SamplerConfig, sample_pairs
from opencir.generate.stages import GenerateConfig
from opencir.generate.validation import ValidationConfig, validate_change
from opencir.generate.writers import WriterConfig, build_writer

__all__ = [
    "CAPTION_PROMPT",
    "PAIR_PROMPT",
    "REFORMULATION_PROMPT",
    "CIReVL",
    "CIReVLConfig",
    "CaptionerConfig",
    "ChatClient",
    "EndpointConfig",
    "GenerateConfig",
    "Pair",
    "RequestError",
    "RunReport",
    "SamplerConfig",
    "ValidationConfig",
    "WriterConfig",
    "build_captioner",
    "build_writer",
    "generate",
    "load_cirevl",
    "sample_pairs",
    "validate_change",
]
