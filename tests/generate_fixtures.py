"""Small image collections for the generation tests (worlds layout, folders, shards)."""

from __future__ import annotations

import io
import json
import os
import tarfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw

COLOURS = {
    "red": (230, 30, 30),
    "green": (30, 180, 30),
    "blue": (30, 30, 230),
    "yellow": (240, 220, 30),
}
SHAPES = ("circle", "square")


def shape_image(colour: str, shape: str, size: int = 32) -> Image.Image:
    """A mostly-``colour`` picture (the fake server names it by its mean colour)."""
    image = Image.new("RGB", (size, size), COLOURS[colour])
    draw = ImageDraw.Draw(image)
    box = (size // 4, size // 4, 3 * size // 4, 3 * size // 4)
    shade = tuple(max(0, c - 40) for c in COLOURS[colour])
    (draw.ellipse if shape == "circle" else draw.rectangle)(box, fill=shade)
    return image


def world_rows(n_train: int = 8, n_test: int = 2) -> list[dict[str, Any]]:
    """Rows in the miniature worlds' ``images.jsonl`` layout."""
    rows = []
    combos = [(c, s) for c in COLOURS for s in SHAPES]
    for index in range(n_train + n_test):
        colour, shape = combos[index % len(combos)]
        size = "large" if index % 3 else "small"
        rows.append(
            {
                "id": f"img{index:03d}",
                "file": f"images/img{index:03d}.png",
                "alt_text": f"a {size} {colour} {shape} in the center",
                "attributes": {
                    "objects": [
                        {"shape": shape, "colour": colour, "size": size, "position": "center"}
                    ]
                },
                "split": "train" if index < n_train else "test",
            }
        )
    return rows


def make_world(root: Path, n_train: int = 8, n_test: int = 2, corrupt: int = 0) -> Path:
    """A world-like folder; the first ``corrupt`` train images are not images at all."""
    (root / "images").mkdir(parents=True, exist_ok=True)
    rows = world_rows(n_train, n_test)
    for index, row in enumerate(rows):
        path = root / row["file"]
        if index < corrupt:
            path.write_bytes(b"this is not a png")
            continue
        objects = row["attributes"]["objects"][0]
        shape_image(objects["colour"], objects["shape"]).save(path)
    (root / "images.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def make_shard(path: Path, members: dict[str, bytes]) -> Path:
    """An uncompressed tar shard with the given member names and contents."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w") as archive:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return path


# A name that is not valid UTF-8, as a ``str`` path (the bytes decoded with surrogateescape).
NON_UTF8_NAME = os.fsdecode(b"bad\xff.png")


@contextmanager
def fifo(path: Path) -> Iterator[Path]:
    """A FIFO at ``path`` that cannot hang a test, whatever the code under test does.

    A helper thread keeps opening and closing the write end, so a reader that opens it the
    blocking way reads an empty file instead of waiting forever (the test then fails on the
    result instead of hanging). On exit, non-blocking reader opens release the helper.
    """
    os.mkfifo(path)
    stop = threading.Event()

    def feed() -> None:
        while not stop.is_set():
            os.close(os.open(path, os.O_WRONLY))

    writer = threading.Thread(target=feed, daemon=True)
    writer.start()
    try:
        yield path
    finally:
        stop.set()
        while writer.is_alive():
            reader = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
            writer.join(0.05)
            os.close(reader)
