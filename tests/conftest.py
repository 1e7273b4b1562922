"""Shared fixtures: tiny images and tiny models (random weights, built instantly)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from PIL import Image

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never touch the network


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture
def images() -> list[Image.Image]:
    colours = [(255, 0, 0), (0, 200, 0), (0, 0, 255)]
    return [Image.new("RGB", (40 + 10 * i, 32), c) for i, c in enumerate(colours)]


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    """A small ShapesCIR world: 40 train images (with alt texts) for training tests."""
    from opencir.data.worlds import generate_shapes_world

    root = tmp_path_factory.mktemp("world") / "shapes"
    generate_shapes_world(
        root, n_train=40, n_test=40, n_queries=6, image_size=32, progress=False, n_val_queries=4
    )
    return root
