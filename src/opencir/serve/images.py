"""Uploaded images in (allowed formats, pixel cap); gallery images out (checked, thumbnails)."""

from __future__ import annotations

import errno
import io
import os
import stat
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from threading import Lock

from PIL import Image, UnidentifiedImageError

from opencir.data.images import ImageLoadError, load_image
from opencir.serve.errors import ApiError

# Pillow's format names → the media types browsers show (MPO: the JPEG of many cameras).
WEB_MEDIA_TYPES = {"JPEG": "image/jpeg", "MPO": "image/jpeg", "PNG": "image/png",
                   "GIF": "image/gif", "WEBP": "image/webp", "BMP": "image/bmp"}  # fmt: skip
MAX_GALLERY_FILE_BYTES = 64 * 2**20


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


@dataclass(frozen=True)
class GalleryFile:
    """A gallery file's bytes, read once and checked: a regular file holding a real image."""

    data: bytes
    format: str  # the container format Pillow found in the bytes (never the extension)

    @property
    def media_type(self) -> str | None:
        """The type to serve the bytes as; None for formats browsers do not show."""
        return WEB_MEDIA_TYPES.get(self.format)


def read_gallery_file(path: Path) -> GalleryFile:
    """The one check of a gallery file before any of its bytes are served (image or thumbnail).

    Refused with :class:`ImageLoadError` (answered as 404): a symbolic link (a gallery file
    swapped for a link to ``/etc/passwd`` must not be served), anything but a regular file, a
    file over :data:`MAX_GALLERY_FILE_BYTES`, and bytes Pillow does not recognise as an image.
    The bytes checked are the bytes served: they are read from the opened file itself.
    """
    data = _read_regular_file(path)
    try:
        with Image.open(io.BytesIO(data)) as image:
            return GalleryFile(data, image.format or "?")
    except Image.DecompressionBombError as error:
        raise ImageLoadError(str(path), "too_large", str(error)) from error
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError) as error:
        raise ImageLoadError(str(path), "not_an_image", "not a recognised image") from error


def _read_regular_file(path: Path) -> bytes:
    if path.is_symlink():
        raise ImageLoadError(str(path), "symlink", "a symbolic link, not served")
    try:  # no following a link swapped in since, no blocking on a FIFO
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | os.O_NONBLOCK)
    except FileNotFoundError as error:
        raise ImageLoadError(str(path), "missing", "no such file") from error
    except OSError as error:
        reason = "symlink" if error.errno == errno.ELOOP else "unreadable"
        raise ImageLoadError(str(path), reason, error.strerror or str(error)) from error
    with os.fdopen(fd, "rb") as handle:
        info = os.fstat(handle.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise ImageLoadError(str(path), "not_a_regular_file", "not a regular file")
        if info.st_size > MAX_GALLERY_FILE_BYTES:
            detail = f"{info.st_size:,} bytes, over the limit of {MAX_GALLERY_FILE_BYTES:,}"
            raise ImageLoadError(str(path), "too_large", detail)
        return handle.read(MAX_GALLERY_FILE_BYTES + 1)


def gallery_image(path: Path) -> tuple[bytes, str]:
    """The checked bytes of a gallery image and their media type (PNG if browsers lack it)."""
    file = read_gallery_file(path)
    if file.media_type:
        return file.data, file.media_type
    return _encode(load_image(file.data, name=str(path)), "PNG"), "image/png"


def render_thumbnail(path: Path, size: int) -> bytes:
    image = load_image(read_gallery_file(path).data, name=str(path))
    image.thumbnail((size, size), Image.Resampling.LANCZOS)
    return _encode(image, "JPEG", quality=90)


def _encode(image: Image.Image, fmt: str, **options: int) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()
