"""A results grid image: the reference and the text, then the ranked hits with scores."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont, ImageOps

from opencir.data.images import ImageLoadError, load_image
from opencir.index.store import Hit

log = logging.getLogger(__name__)

_CAPTION = 34
_PAD = 8


def _thumb(image: Image.Image | None, size: int) -> Image.Image:
    if image is None:
        return Image.new("RGB", (size, size), (235, 235, 235))
    return ImageOps.pad(image, (size, size), color=(245, 245, 245))


def _tile(image: Image.Image | None, lines: Sequence[str], size: int, accent: bool) -> Image.Image:
    tile = Image.new("RGB", (size, size + _CAPTION), "white")
    tile.paste(_thumb(image, size), (0, 0))
    draw = ImageDraw.Draw(tile)
    font = ImageFont.load_default(size=12)
    for row, line in enumerate(lines[:2]):
        draw.text(
            (4, size + 3 + 15 * row), _fit(draw, line, font, size - 8), fill=(30, 30, 30), font=font
        )
    if accent:
        draw.rectangle((0, 0, size - 1, size + _CAPTION - 1), outline=(40, 90, 200), width=3)
    return tile


def _fit(draw: ImageDraw.ImageDraw, text: str, font: ImageFont.ImageFont, width: int) -> str:
    while text and draw.textlength(text, font=font) > width:
        text = text[:-2] + "…" if len(text) > 1 else ""
    return text


def _open(path: Path) -> Image.Image | None:
    try:
        return load_image(path)
    except ImageLoadError as error:
        log.warning("grid: %s", error)
        return None


def render_grid(
    reference: Image.Image,
    text: str,
    hits: Sequence[Hit],
    out: str | Path,
    columns: int = 6,
    size: int = 160,
) -> Path:
    """Write a PNG: the reference (outlined) with the text, then hits in rank order."""
    tiles = [_tile(reference, ["reference", text], size, accent=True)]
    for hit in hits:
        lines = [f"#{hit.rank}  {hit.score:.3f}", hit.item.name]
        tiles.append(_tile(_open(hit.item.path), lines, size, accent=False))
    columns = max(1, min(columns, len(tiles)))
    rows = -(-len(tiles) // columns)
    width, height = size + _PAD, size + _CAPTION + _PAD
    canvas = Image.new("RGB", (columns * width + _PAD, rows * height + _PAD), (250, 250, 250))
    for index, tile in enumerate(tiles):
        canvas.paste(tile, (_PAD + (index % columns) * width, _PAD + (index // columns) * height))
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(out)
    return out
