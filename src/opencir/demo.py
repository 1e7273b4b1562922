"""The end-to-end demo behind ``make demo``: the best complete path the toolkit offers."""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from PIL import Image, ImageDraw

import opencir

log = logging.getLogger(__name__)

COLOURS = {"red": (220, 30, 30), "green": (30, 170, 60), "blue": (40, 70, 220)}
SHAPES = ("circle", "square")


def _render(colour: str, shape: str) -> Image.Image:
    image = Image.new("RGB", (64, 64), "white")
    draw = ImageDraw.Draw(image)
    box = (14, 14, 50, 50)
    (draw.ellipse if shape == "circle" else draw.rectangle)(box, fill=COLOURS[colour])
    return image


def run_demo(serve: bool | None = None, workdir: str | Path = "runs/demo") -> int:
    """Build a model, save and reload its checkpoint, embed a gallery, run composed queries."""
    workdir = Path(workdir)
    model = opencir.create_model("instructcir-tiny").eval()
    model.save(workdir / "instructcir-tiny")
    model = opencir.load(workdir / "instructcir-tiny")
    keys = [f"{c} {s}" for c in COLOURS for s in SHAPES]
    gallery = model.encode_target([_render(*k.split()) for k in keys])
    queries = [("red circle", "make it blue"), ("green square", "turn it into a circle")]
    for reference, text in queries:
        query = model.encode_query([_render(*reference.split())], [text])
        scores = (query @ gallery.T)[0]
        order = torch.argsort(scores, descending=True, stable=True)[:3]
        ranked = ", ".join(f"{keys[i]} ({scores[i]:.3f})" for i in order)
        print(f"[{reference}] + '{text}' -> {ranked}")
    print(f"checkpoint written to {workdir / 'instructcir-tiny'} (untrained tiny model)")
    return 0
