"""Image preprocessing without torchvision: resize, crop, normalise — PIL + NumPy only."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image

from opencir.models.config import PreprocessConfig

_RESAMPLE = {
    "bicubic": Image.Resampling.BICUBIC,
    "bilinear": Image.Resampling.BILINEAR,
    "nearest": Image.Resampling.NEAREST,
}


def _resize_and_crop(image: Image.Image, config: PreprocessConfig) -> Image.Image:
    resample = _RESAMPLE[config.resample]
    size = config.size
    if config.resize == "squash":
        return image.resize((size, size), resample)
    width, height = image.size
    scale = size / min(width, height)
    new_w, new_h = max(size, round(width * scale)), max(size, round(height * scale))
    image = image.resize((new_w, new_h), resample)
    left, top = (new_w - size) // 2, (new_h - size) // 2
    return image.crop((left, top, left + size, top + size))


def preprocess_images(images: Sequence[Image.Image], config: PreprocessConfig) -> torch.Tensor:
    """Turn PIL images into a normalised ``[B, 3, size, size]`` float32 tensor."""
    if isinstance(images, Image.Image):
        images = [images]
    if len(images) == 0:
        raise ValueError("preprocess_images got an empty list of images")
    batch = np.empty((len(images), config.size, config.size, 3), dtype=np.float32)
    for i, image in enumerate(images):
        if not isinstance(image, Image.Image):
            raise TypeError(f"image {i} is a {type(image).__name__}, expected a PIL.Image.Image")
        batch[i] = np.asarray(_resize_and_crop(image.convert("RGB"), config), dtype=np.float32)
    mean = np.asarray(config.mean, dtype=np.float32) * 255.0
    std = np.asarray(config.std, dtype=np.float32) * 255.0
    batch = (batch - mean) / std
    return torch.from_numpy(batch).permute(0, 3, 1, 2).contiguous()
