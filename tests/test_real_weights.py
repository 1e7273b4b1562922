"""OpenCIR's CLIP embeddings equal transformers' ``CLIPModel`` on the same photos and texts.

With real weights: ``OPENCIR_CLIP_DIR=/models/clip-vit-large-patch14 pytest -m real_weights``
(any CLIP checkpoint folder in ``save_pretrained`` layout: config, weights, tokenizer,
``preprocessor_config.json``); skipped without it. The same comparison runs on every test
run against a tiny random CLIP saved the same way.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from transformers import AutoTokenizer, CLIPConfig, CLIPModel

import opencir
from opencir.models.registry import get_model_config
from opencir.models.tokenizer import byte_level_tokenizer
from tests.test_preprocess import pil_processor_class, sample_photos

CLIP_DIR_VARIABLE = "OPENCIR_CLIP_DIR"
TOLERANCE = 1e-4
TEXTS = (
    "a photo of a cat",
    "an astronaut in a white suit",
    "same mug but red and without the saucer",
    "a rocket on the launch pad at night",
)


def hf_clip_embeddings(directory: Path, images, texts) -> tuple[torch.Tensor, torch.Tensor]:
    """Normalised image and text embeddings the way transformers computes them."""
    processor = pil_processor_class("CLIPImageProcessor").from_pretrained(directory)
    tokenizer = AutoTokenizer.from_pretrained(directory)
    model = CLIPModel.from_pretrained(directory).eval()
    pixels = torch.from_numpy(np.stack(processor(images, return_tensors="np")["pixel_values"]))
    tokens = tokenizer(list(texts), padding=True, truncation=True, return_tensors="pt")
    with torch.no_grad():
        image = model.get_image_features(pixel_values=pixels)
        text = model.get_text_features(
            input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"]
        )
    image, text = (getattr(out, "pooler_output", out) for out in (image, text))
    return F.normalize(image, dim=-1), F.normalize(text, dim=-1)


def opencir_clip_embeddings(directory: Path, images, texts) -> tuple[torch.Tensor, torch.Tensor]:
    """Normalised image and text embeddings of OpenCIR loaded as ``NAME@DIR`` (as users do)."""
    model = opencir.load_model(f"sum-vit-b-32@{directory}")
    with torch.inference_mode():
        return model.image_and_text(model.pixels(images), model.tokenize(list(texts)))


def largest_differences(directory: Path) -> tuple[float, float]:
    """Max abs difference of the image and of the text embeddings, OpenCIR vs transformers."""
    images = sample_photos()
    ours = opencir_clip_embeddings(directory, images, TEXTS)
    reference = hf_clip_embeddings(directory, images, TEXTS)
    return tuple(float((a - b).abs().max()) for a, b in zip(ours, reference, strict=True))


@pytest.mark.real_weights
def test_real_clip_embeddings_match_transformers() -> None:
    location = os.environ.get(CLIP_DIR_VARIABLE)
    if not location:
        pytest.skip(f"set {CLIP_DIR_VARIABLE} to a CLIP checkpoint folder to compare real weights")
    if not Path(location).is_dir():
        pytest.fail(f"{CLIP_DIR_VARIABLE}={location} is not a folder")
    image_gap, text_gap = largest_differences(Path(location))
    assert image_gap <= TOLERANCE and text_gap <= TOLERANCE, (image_gap, text_gap)


def save_tiny_clip(directory: Path) -> None:
    """A random tiny CLIP in the layout of a hub snapshot (weights, tokenizer, processor)."""
    backbone = get_model_config("sum-tiny").backbone
    pre = backbone.preprocess
    torch.manual_seed(0)
    CLIPModel(CLIPConfig(**backbone.architecture)).save_pretrained(directory)
    byte_level_tokenizer(backbone.max_text_length).save_pretrained(directory)
    processor = pil_processor_class("CLIPImageProcessor")(
        size={"shortest_edge": pre.size},
        crop_size={"height": pre.size, "width": pre.size},
        image_mean=list(pre.mean),
        image_std=list(pre.std),
    )
    processor.save_pretrained(directory)


def test_comparison_passes_on_a_tiny_random_clip(tmp_path: Path) -> None:
    save_tiny_clip(tmp_path / "clip")
    image_gap, text_gap = largest_differences(tmp_path / "clip")
    assert image_gap <= TOLERANCE and text_gap <= TOLERANCE, (image_gap, text_gap)
    image, text = hf_clip_embeddings(tmp_path / "clip", sample_photos(), TEXTS)
    # not vacuous: different photos and texts give clearly different embeddings
    assert float((image[0] - image[1]).abs().max()) > 100 * TOLERANCE
    assert float((text[0] - text[1]).abs().max()) > 100 * TOLERANCE
