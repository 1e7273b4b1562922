"""Robust image loading shared by evaluation, generation, indexing and serving.

Every failure mode of real collections becomes an :class:`ImageLoadError` with a reason,
never a crash deep inside a worker: missing files, non-image bytes, truncated files,
decompression bombs (our own pixel cap, below Pillow's), odd modes (palette, CMYK, alpha,
16-bit), animated images (first frame), and EXIF orientation. Files are opened only if they
are regular files (a FIFO or device in an image folder is refused, never waited on), and
folder listings skip what no output could name (:func:`listable_image_file`).
"""

from __future__ import annotations

import io
import logging
import os
import stat
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from PIL import Image, ImageOps, UnidentifiedImageError

log = logging.getLogger(__name__)

DEFAULT_MAX_PIXELS = 64_000_000  # below Pillow's bomb threshold (~89M), enough for 8K photos


class ImageLoadError(ValueError):
    """An image could not be loaded; ``reason`` is a short machine-readable code."""

    def __init__(self, source: str, reason: str, detail: str) -> None:
        super().__init__(f"cannot load image {source}: {detail} ({reason})")
        self.source, self.reason, self.detail = source, reason, detail


def valid_text_name(name: str | Path) -> bool:
    """Whether a file name can be written as text; if not, a warning shows its bytes.

    Listing a folder decodes undecodable bytes to lone surrogates, which no JSON, SQLite or
    HTTP output accepts, so such a file is skipped by name here instead of failing later.
    """
    try:
        os.fspath(name).encode("utf-8")
    except UnicodeEncodeError:
        log.warning("skipping %r: its name is not valid UTF-8 (rename the file)", os.fsencode(name))
        return False
    return True


def utf8_lines(list_file: Path) -> Iterator[tuple[int, str]]:
    """``(line number, text)`` of a list or manifest; bytes that are not UTF-8 are refused
    with a :class:`ValueError` naming the file and line (an undecodable path inside, often).
    """
    with list_file.open("rb") as handle:
        for number, raw in enumerate(handle, start=1):
            try:
                yield number, raw.decode("utf-8")
            except UnicodeDecodeError as error:
                raise ValueError(
                    f"{list_file}:{number}: not valid UTF-8 (byte {raw[error.start]:#04x} at "
                    f"column {error.start + 1}); lists and manifests must be UTF-8 text"
                ) from error


def listable_image_file(path: Path) -> bool:
    """Whether a file found in an image folder is listed; a warning names each one that is not.

    Skipped: names that are not valid UTF-8 (:func:`valid_text_name`) and FIFOs, sockets and
    devices (reading a FIFO waits for a writer forever). A broken link stays listed and fails
    to load as ``missing``, like a file deleted after the listing.
    """
    if not valid_text_name(path):
        return False
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return True
    if not stat.S_ISREG(mode):
        log.warning("skipping %s: not a regular file (a FIFO, socket or device)", path)
        return False
    return True


def open_regular_file(path: str | Path, label: str) -> BinaryIO:
    """``path`` opened for reading if it is a regular file, else :class:`ImageLoadError`.

    The open does not block, so a FIFO is refused at once instead of waiting for a writer.
    """
    try:
        descriptor = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except FileNotFoundError as error:
        raise ImageLoadError(label, "missing", "no such file") from error
    except OSError as error:
        raise ImageLoadError(label, "unreadable", f"{path}: {error.strerror}") from error
    if not stat.S_ISREG(os.fstat(descriptor).st_mode):
        os.close(descriptor)
        raise ImageLoadError(label, "not_a_file", f"{path} is not a regular file")
    os.set_blocking(descriptor, True)
    return os.fdopen(descriptor, "rb")


def load_image(
    source: str | Path | bytes, max_pixels: int = DEFAULT_MAX_PIXELS, name: str | None = None
) -> Image.Image:
    """Open a path or raw bytes as an upright RGB image, or raise :class:`ImageLoadError`."""
    label = name or (f"<{len(source)} bytes>" if isinstance(source, bytes) else str(source))
    stream = io.BytesIO(source) if isinstance(source, bytes) else open_regular_file(source, label)
    with stream:
        return _decode(stream, label, max_pixels)


def _decode(stream: BinaryIO, label: str, max_pixels: int) -> Image.Image:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(stream)
            _check_pixels(image, label, max_pixels)
            image.seek(0)  # animated: first frame
            image.load()
    except ImageLoadError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise ImageLoadError(label, "too_large", str(error)) from error
    except UnidentifiedImageError as error:
        raise ImageLoadError(label, "not_an_image", "not a recognised image format") from error
    except (OSError, SyntaxError, ValueError, EOFError) as error:
        raise ImageLoadError(label, "corrupt", f"truncated or corrupt data: {error}") from error
    return _to_rgb(ImageOps.exif_transpose(image))


def _check_pixels(image: Image.Image, label: str, max_pixels: int) -> None:
    width, height = image.size
    if width * height > max_pixels:
        raise ImageLoadError(
            label, "too_large", f"{width}x{height} pixels exceeds the cap of {max_pixels:,}"
        )
    if width == 0 or height == 0:
        raise ImageLoadError(label, "corrupt", f"empty image ({width}x{height})")


def _to_rgb(image: Image.Image) -> Image.Image:
    """Palette/CMYK/16-bit/alpha → RGB; transparent areas become white, not black."""
    if image.mode == "RGB":
        return image
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA"):
        background = Image.new("RGB", image.size, (255, 255, 255))
        background.paste(image.convert("RGBA"), mask=image.convert("RGBA").getchannel("A"))
        return background
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        image = image.point(lambda value: value / 256).convert("L")
    return image.convert("RGB")
