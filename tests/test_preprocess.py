"""Preprocessing gives the pixels transformers' own image processors give, on real photos.

The reference is the PIL backend of ``CLIPImageProcessor`` / ``SiglipImageProcessor`` (the
processor pretrained CLIP and SigLIP checkpoints ship), built from the same values as each
registered backbone's preprocessing, so nothing is downloaded.
"""

from __future__ import annotations

import numpy as np
import pytest
import transformers
from PIL import Image

from opencir.models.config import PreprocessConfig
from opencir.models.preprocess import preprocess_images, shortest_edge_size
from opencir.models.registry import get_model_config, list_models

skimage_data = pytest.importorskip("skimage.data")

PHOTOS = ("astronaut", "chelsea", "coffee", "rocket")
ODD_SIZES = ((640, 480), (480, 640), (1000, 333), (333, 1000), (7, 5), (5, 7))
RESAMPLE = {"bicubic": 3, "bilinear": 2, "nearest": 0}


def registered_preprocessing() -> list[PreprocessConfig]:
    """Every distinct preprocessing of the registered models, in a stable order."""
    configs = {get_model_config(name).backbone.preprocess for name in list_models()}
    return sorted(configs, key=repr)


def pil_processor_class(name: str) -> type:
    """transformers' PIL-backend image processor class (``NamePil`` from transformers 5 on)."""
    return getattr(transformers, f"{name}Pil", None) or getattr(transformers, name)


def sample_photos() -> list[Image.Image]:
    """Real photographs of several sizes and aspect ratios."""
    return [Image.fromarray(getattr(skimage_data, name)()) for name in PHOTOS]


def hf_processor(config: PreprocessConfig):
    """The transformers processor (PIL backend) a checkpoint with ``config`` would ship."""
    common = {
        "image_mean": list(config.mean),
        "image_std": list(config.std),
        "resample": RESAMPLE[config.resample],
    }
    if config.resize == "squash":
        siglip = pil_processor_class("SiglipImageProcessor")
        return siglip(size={"height": config.size, "width": config.size}, **common)
    return pil_processor_class("CLIPImageProcessor")(
        size={"shortest_edge": config.size},
        crop_size={"height": config.size, "width": config.size},
        **common,
    )


def photos() -> list[Image.Image]:
    """The sample photos as they are, and squeezed to odd sizes (wide, tall, tiny)."""
    originals = sample_photos()
    resized = [
        originals[i % len(originals)].resize(size, Image.Resampling.LANCZOS)
        for i, size in enumerate(ODD_SIZES)
    ]
    return originals + resized


def hf_pixels(config: PreprocessConfig, images: list[Image.Image]) -> np.ndarray:
    return np.stack(hf_processor(config)(images, return_tensors="np")["pixel_values"])


@pytest.mark.parametrize("config", registered_preprocessing(), ids=repr)
def test_pixels_match_transformers_processor_on_real_photos(config: PreprocessConfig) -> None:
    images = photos()
    ours = preprocess_images(images, config).numpy()
    reference = hf_pixels(config, images)
    assert ours.shape == reference.shape == (len(images), 3, config.size, config.size)
    assert np.abs(ours - reference).max() <= 1e-4


def test_transparent_areas_become_white_as_in_transformers() -> None:
    config = PreprocessConfig(size=48)
    logo = Image.fromarray(skimage_data.logo())  # RGBA with transparent background
    assert logo.mode == "RGBA"
    ours = preprocess_images([logo], config).numpy()
    assert np.abs(ours - hf_pixels(config, [logo])).max() <= 1e-4


@pytest.mark.parametrize(
    ("width", "height", "expected"),
    [(640, 480, (298, 224)), (480, 640, (224, 298)), (1000, 333, (672, 224)), (7, 5, (313, 224))],
)
def test_long_side_is_truncated_like_transformers(width: int, height: int, expected) -> None:
    assert shortest_edge_size(width, height, 224) == expected
