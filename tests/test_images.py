"""Validation and loading of product images (phi3v.data.images): every bad input gets its exact reason."""

from __future__ import annotations

import functools
import io
import random
import struct
import threading
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from phi3v.data.images import REASONS, ImageRejected, image_size, inspect_image_bytes, load_product_image

pytestmark = pytest.mark.unit

# ---- image factories (also used by test_download.py) ------------------------------------------------


def encode(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def noise(size: tuple[int, int], seed: int = 0) -> Image.Image:
    """Random RGB pixels: they compress badly, so half of the file is half of the pixel data."""
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    return Image.fromarray(pixels)


def exif_rotated_jpeg() -> bytes:
    """48x20 stored pixels, red marker top-left, EXIF orientation 6 (displayed rotated 90 degrees clockwise)."""
    image = Image.new("RGB", (48, 20), (255, 255, 255))
    image.paste((255, 0, 0), (0, 0, 8, 8))
    exif = Image.Exif()
    exif[0x0112] = 6
    return encode(image, "JPEG", exif=exif.tobytes(), quality=95)


def animated_gif() -> bytes:
    frames = [Image.new("RGB", (43, 33), color) for color in ((255, 0, 0), (0, 255, 0), (0, 0, 255))]
    return encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)


def png16() -> bytes:
    """45x35 16-bit grey: columns 0-14 black, 15-29 value 32896 (-> 128), 30-44 white (65535)."""
    values = np.zeros((35, 45), dtype=np.uint16)
    values[:, 15:30] = 32896
    values[:, 30:] = 65535
    return encode(Image.fromarray(values), "PNG")


def palette_png() -> bytes:
    """46x36 palette image, index 0 transparent (blue), index 1 opaque (green), left half 0, right half 1."""
    image = Image.new("P", (46, 36), 0)
    image.putpalette([0, 0, 255, 0, 255, 0] + [0] * 762)
    image.paste(1, (23, 0, 46, 36))
    return encode(image, "PNG", transparency=0)


@functools.cache
def good_images() -> dict[str, tuple[bytes, str, tuple[int, int]]]:
    """name -> (encoded bytes, expected format, expected upright (width, height))."""
    return {
        "jpeg": (encode(Image.new("RGB", (40, 30), (200, 30, 30)), "JPEG"), "jpeg", (40, 30)),
        "png": (encode(Image.new("RGB", (41, 31), (30, 200, 30)), "PNG"), "png", (41, 31)),
        "webp": (encode(Image.new("RGB", (42, 32), (30, 30, 200)), "WEBP"), "webp", (42, 32)),
        "gif": (animated_gif(), "gif", (43, 33)),
        "cmyk": (encode(Image.new("CMYK", (44, 34), (0, 255, 255, 0)), "JPEG"), "jpeg", (44, 34)),
        "png16": (png16(), "png", (45, 35)),
        "palette": (palette_png(), "png", (46, 36)),
        "rgba": (encode(Image.new("RGBA", (47, 37), (10, 20, 30, 0)), "PNG"), "png", (47, 37)),
        "grey": (encode(Image.new("L", (49, 39), 77), "PNG"), "png", (49, 39)),
        "exif": (exif_rotated_jpeg(), "jpeg", (20, 48)),
    }


def truncated_jpeg() -> bytes:
    data = encode(noise((64, 64)), "JPEG")
    return data[: len(data) // 2]


def truncated_png() -> bytes:
    data = encode(noise((64, 64)), "PNG")
    return data[: len(data) // 2]


def bomb_png(width: int, height: int) -> bytes:
    """A 1-bit 8x8 PNG whose header claims width x height (IHDR patched, CRC recomputed)."""
    data = bytearray(encode(Image.new("1", (8, 8)), "PNG"))
    # Layout: 8-byte signature, then IHDR chunk = length(4) "IHDR"(4) width(4) height(4) ... CRC at 29.
    struct.pack_into(">II", data, 16, width, height)
    struct.pack_into(">I", data, 29, zlib.crc32(bytes(data[12:29])))
    return bytes(data)


HTML = b"<!DOCTYPE html>\n<html><head><title>Product not found</title></head><body>Gone</body></html>"
SVG = b'<?xml version="1.0" encoding="UTF-8"?>\n<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"/>'
RANDOM = random.Random(0).randbytes(4096)


# ---- good images ------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(good_images()))
def test_good_image_format_and_upright_size(name):
    data, fmt, size = good_images()[name]
    assert inspect_image_bytes(data) == (fmt, *size)


@pytest.mark.parametrize("name", sorted(good_images()))
def test_good_image_loads_as_rgb(name, tmp_path):
    data, _, size = good_images()[name]
    path = tmp_path / f"image.{name}"
    path.write_bytes(data)
    image = load_product_image(path)
    assert image.mode == "RGB"
    assert image.size == size


def load(data: bytes, tmp_path: Path) -> Image.Image:
    path = tmp_path / "image"
    path.write_bytes(data)
    return load_product_image(str(path))


def test_gif_loads_its_first_frame(tmp_path):
    image = load(animated_gif(), tmp_path)
    assert image.getpixel((0, 0)) == (255, 0, 0)
    assert image.getpixel((42, 32)) == (255, 0, 0)


def test_exif_orientation_is_applied(tmp_path):
    image = load(exif_rotated_jpeg(), tmp_path)
    assert image.size == (20, 48)
    # Rotating 90 degrees clockwise moves the stored top-left marker to the top-right corner.
    red, green, blue = image.getpixel((17, 2))
    assert red > 200 and green < 60 and blue < 60
    assert image.getpixel((2, 2)) == pytest.approx((255, 255, 255), abs=12)


def test_16_bit_grey_is_rescaled_not_clipped(tmp_path):
    image = load(png16(), tmp_path)
    assert [image.getpixel((x, 10)) for x in (0, 20, 40)] == [(0, 0, 0), (128, 128, 128), (255, 255, 255)]


def test_palette_transparency_and_alpha_are_dropped(tmp_path):
    palette = load(palette_png(), tmp_path)
    assert palette.getpixel((0, 0)) == (0, 0, 255) and palette.getpixel((45, 0)) == (0, 255, 0)
    rgba = load(encode(Image.new("RGBA", (5, 5), (10, 20, 30, 0)), "PNG"), tmp_path)
    assert rgba.getpixel((2, 2)) == (10, 20, 30)


def test_cmyk_jpeg_colours_survive(tmp_path):
    red, green, blue = load(good_images()["cmyk"][0], tmp_path).getpixel((5, 5))
    assert red > 230 and green < 30 and blue < 30


def test_max_pixels_boundary_is_inclusive():
    data = good_images()["jpeg"][0]  # 40 x 30 = 1200 pixels
    assert inspect_image_bytes(data, max_pixels=1200) == ("jpeg", 40, 30)
    with pytest.raises(ImageRejected) as caught:
        inspect_image_bytes(data, max_pixels=1199)
    assert caught.value.reason == "too_many_pixels"


# ---- rejections -------------------------------------------------------------------------------------

REJECTED = {
    "empty": (b"", "empty"),
    "html": (HTML, "not_an_image"),
    "text": (b"Access denied", "not_an_image"),
    "random": (RANDOM, "not_an_image"),
    "s3_xml_error": (b'<?xml version="1.0"?><Error><Code>AccessDenied</Code></Error>', "not_an_image"),
    "svg": (SVG, "unsupported_format"),
    "bare_svg_with_bom": (b"\xef\xbb\xbf  \n<svg xmlns='http://www.w3.org/2000/svg'/>", "unsupported_format"),
    "ppm": (encode(Image.new("RGB", (4, 4)), "PPM"), "unsupported_format"),
    "heic": (b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + bytes(64), "unsupported_format"),
    "truncated_jpeg": (truncated_jpeg(), "truncated"),
    "truncated_png": (truncated_png(), "truncated"),
    "png_header_cut": (encode(Image.new("RGB", (4, 4)), "PNG")[:30], "truncated"),
    # 400 M pixels: above 2 * Image.MAX_IMAGE_PIXELS, Pillow itself raises DecompressionBombError.
    "bomb_pillow_error": (bomb_png(20_000, 20_000), "too_many_pixels"),
    # 100 M pixels: between Image.MAX_IMAGE_PIXELS and twice that, Pillow only warns (made an error locally).
    "bomb_pillow_warning": (bomb_png(10_000, 10_000), "too_many_pixels"),
    # 81 M pixels: under Pillow's limits, above the default max_pixels of 64 M: our own header check.
    "bomb_own_check": (bomb_png(9_000, 9_000), "too_many_pixels"),
    "zero_width": (bomb_png(0, 8), "zero_size"),
    "unconvertible_float": (encode(Image.new("F", (4, 4), 1000.0), "TIFF"), "unconvertible"),
}


@pytest.mark.parametrize("name", sorted(REJECTED))
def test_bad_bytes_are_rejected_with_their_reason(name):
    data, reason = REJECTED[name]
    with pytest.raises(ImageRejected) as caught:
        inspect_image_bytes(data)
    assert caught.value.reason == reason
    assert caught.value.detail
    assert reason in REASONS


# What decoding rejects only once it reads the pixels (the header is fine) or after the header (modes).
DECODE_ONLY = {"truncated_jpeg", "truncated_png", "unconvertible_float"}


@pytest.mark.parametrize("name", sorted(REJECTED))
def test_the_header_alone_rejects_what_it_can_with_the_same_reason(name):
    data, reason = REJECTED[name]
    if name in DECODE_ONLY:
        assert image_size(data) == Image.open(io.BytesIO(data)).size
        return
    with pytest.raises(ImageRejected) as caught:
        image_size(data)
    assert caught.value.reason == reason


def test_the_header_gives_the_stored_size_and_the_same_pixel_limit():
    assert image_size(exif_rotated_jpeg()) == (48, 20)  # stored, not upright: the pixel count is the same
    data = good_images()["jpeg"][0]  # 40 x 30
    assert image_size(data, max_pixels=1200) == (40, 30)
    with pytest.raises(ImageRejected, match="too_many_pixels: 40x30 = 1200 pixels > 1199"):
        image_size(data, max_pixels=1199)


@pytest.mark.parametrize("name", ["html", "truncated_jpeg", "bomb_pillow_error", "svg", "empty"])
def test_load_rejects_bad_files_naming_the_path(name, tmp_path):
    data, reason = REJECTED[name]
    path = tmp_path / "bad"
    path.write_bytes(data)
    with pytest.raises(ImageRejected) as caught:
        load_product_image(path)
    assert caught.value.reason == reason
    assert str(path) in caught.value.detail


def test_missing_or_unreadable_file(tmp_path):
    for path in (tmp_path / "missing.jpeg", tmp_path):
        with pytest.raises(ImageRejected) as caught:
            load_product_image(path)
        assert caught.value.reason == "unreadable"
        assert str(path) in caught.value.detail


def test_bomb_checks_leave_pillow_and_warning_globals_alone():
    limit, filters = Image.MAX_IMAGE_PIXELS, list(warnings.filters)
    errors: list[BaseException] = []

    def hammer(data: bytes) -> None:
        for _ in range(20):
            try:
                inspect_image_bytes(data)
            except ImageRejected:
                pass
            except BaseException as error:  # pragma: no cover - reported below
                errors.append(error)

    samples = [bomb_png(20_000, 20_000), bomb_png(10_000, 10_000), good_images()["png"][0], RANDOM]
    threads = [threading.Thread(target=hammer, args=(data,)) for data in samples * 2]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert Image.MAX_IMAGE_PIXELS == limit
    assert warnings.filters == filters


def test_max_pixels_above_pillow_limit_is_honoured():
    # 100 M pixels is fine for a caller allowing 200 M: Pillow's warning must not reject it. The crafted
    # file only holds 8x8 pixels of data, so decoding then fails for the honest reason.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(ImageRejected) as rejected:
            inspect_image_bytes(bomb_png(10_000, 10_000), max_pixels=200_000_000)
    assert rejected.value.reason == "truncated"
    assert not [w for w in caught if issubclass(w.category, Image.DecompressionBombWarning)]


def test_image_rejected_carries_reason_and_detail():
    error = ImageRejected("truncated", "cut after 10 bytes")
    assert (error.reason, error.detail, str(error)) == (
        "truncated",
        "cut after 10 bytes",
        "truncated: cut after 10 bytes",
    )
    assert set(REASONS) == {
        "empty", "not_an_image", "unsupported_format", "truncated", "too_many_pixels", "zero_size",
        "unconvertible", "unreadable",
    }  # fmt: skip
