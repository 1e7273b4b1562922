"""Uploaded images in (allow-listed formats, pixel cap) and gallery images out (thumbnails)."""

from __future__ import annotations

import io
import logging
from collections import OrderedDict
from pathlib import Path
from threading import Lock

from PIL import Image, UnidentifiedImageError

from opencir.data.images import ImageLoadError, load_image
from opencir.serve.errors import ApiError

log = logging.getLogger(__name__)

WEB_FORMATS = {".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".png": "image/png",
               ".gif": "image/gif", ".webp": "image/webp", ".bmp": "image/bmp"}  # fmt: skip


def _sniff(data: bytes, allowed: tuple[str, ...], max_pixels: int) -> None:
    """Check the container format and the pixel count from the header, before decoding."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            fmt, (width, height) = image.format or "?", image.size
    except Image.DecompressionBombError as error:
        raise ApiError(
            413, "image_too_large", f"image has too many pixels: {error}", "image"
        ) from error
    except UnidentifiedImageError as error:
        raise ApiError(
            415, "not_an_image", "the upload is not a recognised image", "image"
        ) from error
    except (OSError, SyntaxError, ValueError, EOFError) as error:
        raise ApiError(422, "corrupt_image", f"the image is corrupt: {error}", "image") from error
    if fmt not in allowed:
        detail = f"image format {fmt} is not accepted; use one of {', '.join(allowed)}"
        raise ApiError(415, "unsupported_format", detail, "image")
    if width * height > max_pixels:
        detail = f"image is {width}x{height} pixels, over the cap of {max_pixels:,}"
        raise ApiError(413, "image_too_large", detail, "image")


def decode_upload(data: bytes, allowed: tuple[str, ...], max_pixels: int) -> Image.Image:
    """Bytes of an upload → RGB image, or an :class:`ApiError` with the right status."""
    if not data:
        raise ApiError(422, "empty_image", "the uploaded image is empty (0 bytes)", "image")
    _sniff(data, allowed, max_pixels)
    try:
        return load_image(data, max_pixels=max_pixels, name="upload")
    except ImageLoadError as error:
        status, code = {
            "too_large": (413, "image_too_large"),
            "not_an_image": (415, "not_an_image"),
        }.get(error.reason, (422, "corrupt_image"))
        raise ApiError(status, code, f"{error.detail}", "image") from error


class Thumbnails:
    """Small JPEG renditions of gallery images, kept in a bounded LRU cache."""

    def __init__(self, capacity: int = 512) -> None:
        self.capacity = capacity
        self._cache: OrderedDict[tuple[str, int], bytes] = OrderedDict()
        self._lock = Lock()

    def get(self, path: Path, size: int) -> bytes:
        key = (str(path), size)
        with self._lock:
            if key in self._cache:
                self._cache.move_to_end(key)
                return self._cache[key]
        data = render_thumbnail(path, size)
        with self._lock:
            self._cache[key] = data
            while len(self._cache) > self.capacity:
                self._cache.popitem(last=False)
        return data


def open_gallery_image(path: Path) -> Image.Image:
    try:
        return load_image(path)
    except ImageLoadError as error:
        log.warning("gallery image unavailable: %s", error)
        code = "image_file_missing" if error.reason == "missing" else "image_unreadable"
        raise ApiError(
            404, code, f"the gallery file for this id is unavailable ({error.reason})", "id"
        ) from error


def render_thumbnail(path: Path, size: int) -> bytes:
    image = open_gallery_image(path)
    image.thumbnail((size, size), Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def render_png(path: Path) -> bytes:
    buffer = io.BytesIO()
    open_gallery_image(path).save(buffer, "PNG")
    return buffer.getvalue()
