"""Shared fixtures: tiny images and tiny models (random weights, built instantly)."""

from __future__ import annotations

import os

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
