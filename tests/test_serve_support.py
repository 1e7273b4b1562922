"""Helpers shared by the index, API and web-page tests (this module holds no tests)."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import torch
from PIL import Image, ImageDraw

import opencir
from opencir.index import BuildConfig, build_index

COLOURS = [(220, 40, 40), (40, 160, 60), (40, 70, 220), (240, 200, 30), (150, 60, 180)]
SHAPES = ("circle", "square", "triangle")

FAST = BuildConfig(batch_size=8, shard_size=8, workers=2, progress=False)


def shape_image(colour: tuple[int, int, int], shape: str, size: int = 48) -> Image.Image:
    image = Image.new("RGB", (size, size), "white")
    draw = ImageDraw.Draw(image)
    box = (size // 5, size // 5, size - size // 5, size - size // 5)
    if shape == "circle":
        draw.ellipse(box, fill=colour)
    elif shape == "square":
        draw.rectangle(box, fill=colour)
    else:
        draw.polygon([(size // 2, box[1]), (box[2], box[3]), (box[0], box[3])], fill=colour)
    return image


def make_gallery(folder: Path, n: int = 15) -> list[Path]:
    """``n`` distinct shape images, half of them in a subfolder."""
    paths = []
    for i in range(n):
        colour, shape = COLOURS[i % len(COLOURS)], SHAPES[(i // len(COLOURS)) % len(SHAPES)]
        path = folder / ("nested" if i % 2 else "") / f"img{i:03d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        shape_image(colour, shape, 40 + i % 7).save(path)
        paths.append(path)
    return paths


def make_checkpoint(folder: Path, seed: int = 1234) -> Path:
    """A tiny random-weight model saved as a checkpoint (loads back through opencir.load)."""
    torch.manual_seed(seed)
    opencir.create_model("instructcir-tiny").save(folder)
    return folder


def build_tiny_index(root: Path, n: int = 15) -> tuple[Path, Path, list[Path]]:
    """(index folder, checkpoint folder, image paths) for a tiny real-model index."""
    checkpoint = make_checkpoint(root / "ckpt")
    paths = make_gallery(root / "gallery", n)
    index = root / "index"
    build_index(opencir.load(checkpoint), root / "gallery", index, FAST, str(checkpoint))
    return index, checkpoint, paths


class FakeRetriever:
    """A fast stand-in model: each image's vector is a fixed random function of its pixels."""

    embed_dim = 16

    def _vector(self, image: Image.Image, salt: str = "") -> np.ndarray:
        digest = hashlib.sha256(image.tobytes() + salt.encode()).digest()
        rng = np.random.default_rng(int.from_bytes(digest[:8], "little"))
        vector = rng.normal(size=self.embed_dim).astype(np.float32)
        return vector / np.linalg.norm(vector)

    def encode_target(self, images: Sequence[Image.Image]) -> torch.Tensor:
        return torch.from_numpy(np.stack([self._vector(image) for image in images]))

    def encode_query(self, images: Sequence[Image.Image], texts: Sequence[str]) -> torch.Tensor:
        vectors = [
            self._vector(i) + 0.5 * self._vector(i, t) for i, t in zip(images, texts, strict=True)
        ]
        matrix = np.stack(vectors)
        return torch.from_numpy(matrix / np.linalg.norm(matrix, axis=1, keepdims=True))


def solid_images(folder: Path, n: int) -> list[Path]:
    """``n`` tiny images of distinct colours (for the fake model)."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        path = folder / f"c{i:04d}.png"
        Image.new("RGB", (8, 8), (i % 256, (i // 256) % 256, 7)).save(path)
        paths.append(path)
    return paths


@contextmanager
def serving(app: Any, timeout: float = 30.0) -> Iterator[httpx.Client]:
    """A real server on loopback for ``app`` and a client to it, once ``/readyz`` says ready."""
    from opencir.serve import start_in_thread

    with start_in_thread(app) as server, httpx.Client(base_url=server.url, timeout=30) as client:
        deadline = time.monotonic() + timeout
        while client.get("/readyz").status_code != 200:
            assert time.monotonic() < deadline, client.get("/readyz").json()
            time.sleep(0.05)
        yield client
