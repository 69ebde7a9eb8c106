"""Validation and loading of downloaded product images.

Every way an image can be unusable maps to one stable snake_case key (see `REASONS`), raised as
`ImageRejected(reason, detail)`. `inspect_image_bytes` (used when downloading) and
`load_product_image` (used when training) run the same decode pipeline, so an image the download
step keeps is an image training can load.

Pipeline: sniff text formats (SVG, HTML) -> identify the format from the header with Pillow, limited
to `ACCEPTED_FORMATS` -> check width * height against `max_pixels` BEFORE any pixel is allocated ->
decode the first frame completely -> apply the EXIF orientation -> convert with `to_rgb`.

Pillow's own bomb guard (`Image.MAX_IMAGE_PIXELS`) is a process-wide global that we never change.
Its warning is turned into an error only inside a local `warnings.catch_warnings` block, and only
when our `max_pixels` is not above Pillow's limit (otherwise it would silently lower the caller's
bound). Pillow's hard error at 2 * MAX_IMAGE_PIXELS always applies and is reported as
"too_many_pixels" too.
"""

from __future__ import annotations

import io
import os
import threading
import warnings
from pathlib import Path

from PIL import Image, ImageFile, UnidentifiedImageError, features

from phi3v.modeling.image_modes import to_rgb

REASONS: dict[str, str] = {
    "empty": "the data has 0 bytes",
    "not_an_image": "HTML, text, random bytes or a format that is not an image",
    "unsupported_format": "an image format outside ACCEPTED_FORMATS (SVG, HEIC, JPEG XL, PSD, EPS, ICO, ...)",
    "truncated": "a known image format whose header or pixel data cannot be decoded (cut off or corrupt)",
    "too_many_pixels": "width * height above max_pixels (or above Pillow's hard limit): a decompression bomb",
    "zero_size": "the header declares a width or height of 0",
    "unconvertible": "decoded, but the pixel mode or values have no 8-bit RGB meaning (see to_rgb)",
    "unreadable": "the stored file is missing or cannot be read",
}
"""Reasons `ImageRejected` can carry, key -> meaning. Keys are stable: manifests and reports count them."""

# Formats Pillow decodes in-process without external programs (EPS would run Ghostscript).
# The JPEG plugin also opens MPO (the multi-picture JPEG many phones write), stored and reported as "jpeg".
ACCEPTED_FORMATS: tuple[str, ...] = ("JPEG", "PNG", "GIF", "WEBP", "BMP", "TIFF") + (
    ("AVIF",) if features.check("avif") else ()
)
_FORMAT_NAMES = {"mpo": "jpeg"}

# Magic numbers of formats Pillow could decode but that were cut off before Pillow identified them.
_KNOWN_SIGNATURES: tuple[tuple[bytes, str], ...] = (
    (b"\xff\xd8\xff", "jpeg"),
    (b"\x89PNG\r\n\x1a\n", "png"),
    (b"GIF87a", "gif"),
    (b"GIF89a", "gif"),
    (b"II*\x00", "tiff"),
    (b"MM\x00*", "tiff"),
)
# Real image formats Pillow cannot open at all. Others it can open but we refuse (PSD, EPS, ICO, JPEG 2000, ...)
# are named by asking Pillow's remaining plugins, see `_other_pillow_format`.
_UNSUPPORTED_SIGNATURES: tuple[tuple[bytes, str], ...] = (
    (b"\xff\x0a", "JPEG XL"),
    (b"\x00\x00\x00\x0cJXL \r\n\x87\n", "JPEG XL"),
)
_HEIF_BRANDS = (b"heic", b"heix", b"hevc", b"hevx", b"heim", b"heis", b"mif1", b"msf1", b"avif", b"avis")

# EXIF orientation -> the transpose that makes the image upright (the table ImageOps.exif_transpose uses).
_ORIENTATION_TAG = 0x0112
_UPRIGHT = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}

# `warnings.catch_warnings` swaps the process-wide filter list; two threads entering and leaving it
# interleaved could leave our "error" filter installed for good. Only the header parse (cheap) runs
# under this lock; the expensive pixel decode runs outside it, in parallel.
_WARNINGS_LOCK = threading.Lock()


class ImageRejected(Exception):
    """An image that cannot be used. `reason` is a key of `REASONS`, `detail` says what exactly."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def inspect_image_bytes(data: bytes, max_pixels: int = 64_000_000) -> tuple[str, int, int]:
    """(format, width, height) of an encoded image, after full decoding and EXIF orientation.

    The format is lower-case ("jpeg", "png", "webp", "gif", ...); width and height are those of the
    upright image `load_product_image` returns. Raises ImageRejected with a key of `REASONS`.
    """
    image, fmt = _decode(data, max_pixels)
    width, height = _to_rgb(_upright(image)).size
    return fmt, width, height


def load_product_image(path: str | os.PathLike, max_pixels: int = 64_000_000) -> Image.Image:
    """A stored image as 8-bit RGB: first frame, EXIF orientation applied, any mode converted by to_rgb.

    Raises ImageRejected (reason from `REASONS`, the path in the detail).
    """
    try:
        data = Path(path).read_bytes()
    except OSError as error:
        raise ImageRejected("unreadable", f"{path}: {error}") from error
    try:
        return decode_product_image(data, max_pixels)
    except ImageRejected as rejected:
        raise ImageRejected(rejected.reason, f"{path}: {rejected.detail}") from rejected


def decode_product_image(data: bytes, max_pixels: int = 64_000_000) -> Image.Image:
    """Encoded bytes (an upload) as 8-bit RGB, exactly as `load_product_image` reads a file.

    Raises ImageRejected (reason from `REASONS`).
    """
    return _to_rgb(_upright(_decode(data, max_pixels)[0]))


def image_size(data: bytes, max_pixels: int = 64_000_000) -> tuple[int, int]:
    """(width, height) read from the header alone, no pixel decoded: what decoding will cost.

    Raises ImageRejected for everything `decode_product_image` refuses before decoding (empty, not an
    image, unsupported format, zero size, too many pixels); a cut-off pixel stream shows only when decoding.
    """
    if not data:
        raise ImageRejected("empty", "0 bytes")
    _reject_text_formats(data)
    with _open_header(data, max_pixels) as image:
        _check_pixels(image.size, max_pixels)
        return image.size


def _decode(data: bytes, max_pixels: int) -> tuple[Image.Image, str]:
    """The image with its first frame fully decoded, and its lower-case format name."""
    if not data:
        raise ImageRejected("empty", "0 bytes")
    _reject_text_formats(data)
    image = _open_header(data, max_pixels)
    _check_pixels(image.size, max_pixels)
    try:
        image.load()  # decodes the first frame only; later frames of animations are never read
    except Image.DecompressionBombError as error:
        raise ImageRejected("too_many_pixels", str(error)) from error
    except MemoryError:
        raise
    except Exception as error:  # Pillow raises OSError, SyntaxError, ValueError, EOFError, ... on bad data
        raise ImageRejected("truncated", f"{image.format} data cannot be decoded: {error}") from error
    _check_pixels(image.size, max_pixels)  # again: a plugin may revise the size while loading
    fmt = (image.format or "").lower()
    return image, _FORMAT_NAMES.get(fmt, fmt)


def _open_header(data: bytes, max_pixels: int) -> ImageFile.ImageFile:
    """Parse the header with Pillow (no pixels yet); classify what Pillow cannot identify."""
    limit = Image.MAX_IMAGE_PIXELS
    bomb_warning = "error" if limit is None or max_pixels <= limit else "ignore"
    try:
        with _WARNINGS_LOCK, warnings.catch_warnings():
            warnings.simplefilter(bomb_warning, Image.DecompressionBombWarning)
            return Image.open(io.BytesIO(data), formats=ACCEPTED_FORMATS)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise ImageRejected("too_many_pixels", str(error)) from error
    except MemoryError:
        raise
    except UnidentifiedImageError as error:
        raise _unidentified(data) from error
    except Exception as error:  # a plugin accepted the header, then failed on it
        raise ImageRejected("truncated", f"image header cannot be parsed: {error}") from error


def _check_pixels(size: tuple[int, int], max_pixels: int) -> None:
    width, height = size
    if width <= 0 or height <= 0:
        raise ImageRejected("zero_size", f"size {width}x{height}")
    if width * height > max_pixels:
        raise ImageRejected("too_many_pixels", f"{width}x{height} = {width * height} pixels > {max_pixels}")


def _reject_text_formats(data: bytes) -> None:
    """SVG is an image format Pillow cannot rasterise: name it instead of calling it "not an image"."""
    # 4 KiB: enough to get past an XML prolog, a DOCTYPE and comments before the root element.
    head = data[:4096].lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    if head.startswith(b"<svg") or (head.startswith((b"<?xml", b"<!doctype svg", b"<!--")) and b"<svg" in head):
        raise ImageRejected("unsupported_format", "SVG (vector graphics) is not accepted")


def _unidentified(data: bytes) -> ImageRejected:
    """The rejection for bytes no accepted Pillow plugin recognised."""
    for magic, name in _KNOWN_SIGNATURES:
        if data.startswith(magic):
            if name == "png" and len(data) >= 24 and (data[16:20] == bytes(4) or data[20:24] == bytes(4)):
                return ImageRejected("zero_size", "PNG header declares a width or height of 0")
            return ImageRejected("truncated", f"{name} signature but the header cannot be parsed ({len(data)} bytes)")
    if data[4:8] == b"ftyp" and data[8:12] in _HEIF_BRANDS:
        return ImageRejected("unsupported_format", f"HEIF/AVIF (brand {data[8:12].decode()}) is not accepted")
    other = next((name for magic, name in _UNSUPPORTED_SIGNATURES if data.startswith(magic)), None)
    other = other or _other_pillow_format(data)
    if other is not None:
        return ImageRejected("unsupported_format", f"{other} is not accepted")
    return ImageRejected("not_an_image", f"unknown format, starts with {data[:32]!r}")


def _other_pillow_format(data: bytes) -> str | None:
    """The name of a Pillow format outside ACCEPTED_FORMATS that recognises `data`'s header, if any."""
    Image.init()
    # Plugins without a signature check (TGA, IPTC, ...) would claim random bytes: only ask those with one.
    candidates = [name for name, (_, accept) in Image.OPEN.items() if accept is not None]
    candidates = [name for name in candidates if name not in ACCEPTED_FORMATS]
    try:
        with _WARNINGS_LOCK, warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data), formats=candidates) as image:  # header only, never decoded
                return image.format
    except MemoryError:
        raise
    except Exception:  # not identified, a bomb, or a plugin failing on the header: nothing to name
        return None


def _upright(image: Image.Image) -> Image.Image:
    """The image turned the way its EXIF orientation says (itself when there is nothing to do)."""
    try:
        orientation = image.getexif().get(_ORIENTATION_TAG, 1)
    except Exception:  # unreadable EXIF is treated as "no orientation", exactly as at training time
        return image
    method = _UPRIGHT.get(orientation) if isinstance(orientation, int) else None
    return image if method is None else image.transpose(method)


def _to_rgb(image: Image.Image) -> Image.Image:
    try:
        return to_rgb(image)
    except ValueError as error:
        raise ImageRejected("unconvertible", str(error)) from error
