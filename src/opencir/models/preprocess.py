"""Image preprocessing without torchvision: resize, crop, normalise — PIL + NumPy only.

The steps and their rounding are those of ``transformers``' image processors (the PIL
backend of ``CLIPImageProcessor`` / ``SiglipImageProcessor``), so pretrained towers see the
pixels they were trained with: the long side after a shortest-edge resize is truncated, not
rounded; PIL resizes the uint8 image; the crop offsets are floored; rescaling by 1/255 is
done in float64 and normalising in float32.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cache

import numpy as np
import torch
from PIL import Image

from opencir.models.config import PreprocessConfig

_RESAMPLE = {
    "bicubic": Image.Resampling.BICUBIC,
    "bilinear": Image.Resampling.BILINEAR,
    "nearest": Image.Resampling.NEAREST,
}


def shortest_edge_size(width: int, height: int, size: int) -> tuple[int, int]:
    """``(width, height)`` once the short side is scaled to ``size``; the long side is
    truncated (``int``), as in transformers' ``get_resize_output_image_size``."""
    short, long = min(width, height), max(width, height)
    new_long = int(size * long / short)
    return (size, new_long) if width <= height else (new_long, size)


def _resize_and_crop(image: Image.Image, config: PreprocessConfig) -> Image.Image:
    resample = _RESAMPLE[config.resample]
    size = config.size
    if config.resize == "squash":
        return image.resize((size, size), resample)
    new_w, new_h = shortest_edge_size(*image.size, size)
    image = image.resize((new_w, new_h), resample)
    left, top = (new_w - size) // 2, (new_h - size) // 2
    return image.crop((left, top, left + size, top + size))


def _rgb(image: Image.Image) -> Image.Image:
    """RGB with transparent areas on white, as transformers' processors (and
    :func:`opencir.data.images.load_image`) do; a plain ``convert`` would make them black."""
    if "A" not in image.getbands() and image.info.get("transparency") is None:
        return image.convert("RGB")
    white = Image.new("RGBA", image.size, (255, 255, 255, 255))
    return Image.alpha_composite(white, image.convert("RGBA")).convert("RGB")


@cache
def _normalise_table(mean: tuple[float, ...], std: tuple[float, ...]) -> np.ndarray:
    """``[3, 256]`` float32: the normalised value of each uint8 level, per channel.

    A lookup gives bit-for-bit the values of rescale (float64, then float32) followed by
    ``(x - mean) / std`` in float32, and is faster than computing them per pixel.
    """
    levels = (np.arange(256, dtype=np.float64) * (1 / 255)).astype(np.float32)
    mean32, std32 = np.asarray(mean, np.float32), np.asarray(std, np.float32)
    return (levels[None, :] - mean32[:, None]) / std32[:, None]


def preprocess_images(images: Sequence[Image.Image], config: PreprocessConfig) -> torch.Tensor:
    """Turn PIL images into a normalised ``[B, 3, size, size]`` float32 tensor."""
    if isinstance(images, Image.Image):
        images = [images]
    if len(images) == 0:
        raise ValueError("preprocess_images got an empty list of images")
    table = _normalise_table(tuple(config.mean), tuple(config.std))
    channels = np.arange(3)[:, None, None]
    batch = np.empty((len(images), 3, config.size, config.size), dtype=np.float32)
    for i, image in enumerate(images):
        if not isinstance(image, Image.Image):
            raise TypeError(f"image {i} is a {type(image).__name__}, expected a PIL.Image.Image")
        pixels = np.asarray(_resize_and_crop(_rgb(image), config))
        batch[i] = table[channels, pixels.transpose(2, 0, 1)]
    return torch.from_numpy(batch)
