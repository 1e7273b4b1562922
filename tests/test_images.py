"""Robust image loading: every bad file becomes a named ImageLoadError, odd modes become RGB."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from opencir.data.images import ImageLoadError, load_image


def _bytes(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **kwargs)
    return buffer.getvalue()


def test_modes_become_rgb() -> None:
    for image in (
        Image.new("P", (8, 8)),
        Image.new("CMYK", (8, 8), (0, 255, 0, 0)),
        Image.new("LA", (8, 8)),
        Image.new("I;16", (8, 8), 65535),
    ):
        fmt = "TIFF" if image.mode in ("CMYK", "I;16") else "PNG"
        assert load_image(_bytes(image, fmt)).mode == "RGB"


def test_transparent_pixels_become_white() -> None:
    rgba = Image.new("RGBA", (4, 4), (255, 0, 0, 0))
    assert load_image(_bytes(rgba, "PNG")).getpixel((0, 0)) == (255, 255, 255)


def test_exif_orientation_is_applied() -> None:
    image = Image.new("RGB", (20, 10), (0, 0, 255))
    exif = image.getexif()
    exif[0x0112] = 6  # rotate 90° clockwise on display
    assert load_image(_bytes(image, "JPEG", exif=exif)).size == (10, 20)


def test_animated_gif_gives_first_frame() -> None:
    frames = [Image.new("RGB", (6, 6), c) for c in ((255, 0, 0), (0, 255, 0))]
    buffer = io.BytesIO()
    frames[0].save(buffer, "GIF", save_all=True, append_images=frames[1:])
    assert load_image(buffer.getvalue()).getpixel((0, 0))[0] > 200


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"definitely not an image", "not_an_image"),
        (_bytes(Image.new("RGB", (64, 64)), "PNG")[:60], "corrupt"),
        (_bytes(Image.new("L", (3000, 3000)), "PNG"), "too_large"),
    ],
)
def test_bad_bytes_are_reported(payload: bytes, reason: str) -> None:
    with pytest.raises(ImageLoadError) as info:
        load_image(payload, max_pixels=1_000_000)
    assert info.value.reason == reason


def test_missing_file(tmp_path) -> None:
    with pytest.raises(ImageLoadError, match="no such file"):
        load_image(tmp_path / "nope.png")
