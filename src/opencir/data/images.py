"""Robust image loading shared by evaluation, generation, indexing and serving.

Every failure mode of real collections becomes an :class:`ImageLoadError` with a reason,
never a crash deep inside a worker: missing files, non-image bytes, truncated files,
decompression bombs (our own pixel cap, below Pillow's), odd modes (palette, CMYK, alpha,
16-bit), animated images (first frame), and EXIF orientation.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path

from PIL import Image, ImageOps, UnidentifiedImageError

DEFAULT_MAX_PIXELS = 64_000_000  # below Pillow's bomb threshold (~89M), enough for 8K photos


class ImageLoadError(ValueError):
    """An image could not be loaded; ``reason`` is a short machine-readable code."""

    def __init__(self, source: str, reason: str, detail: str) -> None:
        super().__init__(f"cannot load image {source}: {detail} ({reason})")
        self.source, self.reason, self.detail = source, reason, detail


def load_image(
    source: str | Path | bytes, max_pixels: int = DEFAULT_MAX_PIXELS, name: str | None = None
) -> Image.Image:
    """Open a path or raw bytes as an upright RGB image, or raise :class:`ImageLoadError`."""
    label = name or (f"<{len(source)} bytes>" if isinstance(source, bytes) else str(source))
    if not isinstance(source, bytes) and not Path(source).is_file():
        raise ImageLoadError(label, "missing", "no such file")
    stream = io.BytesIO(source) if isinstance(source, bytes) else source
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
