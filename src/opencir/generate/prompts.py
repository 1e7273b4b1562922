"""Default prompts and their hashes (recorded in every triplet's provenance).

``REFORMULATION_PROMPT`` is the prompt of InstructCIR (seed 002, Table I), kept word for word
including its spacing; ``{caption_a}`` and ``{caption_b}`` are filled with the two captions.
The others are ours: the captioning prompt (the seed gives only its intent: a detailed
description of objects, style and colour), the pair-vision prompt of the S3 "Spoter"
writer, and the CIReVL-style caption rewrite.
"""

from __future__ import annotations

import hashlib

REFORMULATION_PROMPT = (
    "You have two captions for two images, image A and image B, you are supposed to write a "
    "reformulation text describing changing from image A to image B. caption A: {caption_a} "
    "caption B: {caption_b} answer should be concise and within 12 words, only contain normal "
    "words, do not use special characters. Difference:"
)

CAPTION_PROMPT = (
    "Describe this image in detail in two or three sentences: the main objects, their "
    "colours, materials, shapes and style, where they are, and the setting."
)

PAIR_PROMPT = (
    "The first image is image A and the second image is image B. Write a reformulation text "
    "describing how to change image A into image B, as an instruction such as 'make the "
    "dress red and sleeveless'. Answer should be concise and within {max_words} words, only "
    "contain normal words, do not use special characters. Difference:"
)

REWRITE_PROMPT = (
    "Image description: {caption}\n"
    "Requested change: {modification}\n"
    "Rewrite the image description so that it describes the image after the change. "
    "Answer with the new description only, in one sentence.\n"
    "New description:"
)


def reformulation_request(
    caption_a: str, caption_b: str, template: str = REFORMULATION_PROMPT, max_words: int = 12
) -> str:
    """The change writer's request for one pair: what ``--writer llm`` sends and a tuned
    writer is trained on."""
    return fill(template, caption_a=caption_a, caption_b=caption_b, max_words=str(max_words))


def prompt_hash(*parts: str) -> str:
    """A short stable hash of a prompt template (and any settings folded into it)."""
    digest = hashlib.sha256("\x1f".join(parts).encode("utf-8"))
    return digest.hexdigest()[:12]


def fill(template: str, **values: str) -> str:
    """Fill ``{name}`` fields, naming the template's unknown fields in the error."""
    try:
        return template.format(**values)
    except (KeyError, IndexError) as error:
        raise ValueError(
            f"prompt template uses field {error} but only {sorted(values)} are available: "
            "escape literal braces as {{ and }}"
        ) from error
