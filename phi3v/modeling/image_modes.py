"""Conversion of PIL images of any mode to the 8-bit RGB the Phi-3-V HD transform works on.

The reference processor calls `image.convert("RGB")` on every input. For 8-bit modes (RGB, RGBA,
LA, L, P, 1, CMYK, YCbCr, ...) we do exactly that, so alpha is dropped, not composited on white.

For high-bit-depth modes `convert("RGB")` silently clips every value above 255 to white, which
turns most 16-bit scans into a blank page. Those modes are rescaled to 8 bits first instead:
- "I;16", "I;16B", "I;16L", "I;16N": 0..65535 -> 0..255 by rounding v / 257 (65535 / 255 = 257,
  so 65535 stays white and 0 stays black).
- "I" (int32): used as-is when all values lie in 0..255, rescaled like I;16 when they lie in
  0..65535 (a 16-bit image loaded as "I"), otherwise rejected: there is no sensible 8-bit meaning.
- "F" (float32): values in [0, 1] are scaled by 255, values in [0, 255] are kept (both rounded),
  anything else (negative, > 255, NaN, inf) is rejected.
An 8-bit image is then replicated to the three channels exactly like `convert("RGB")` of "L".
"""

from __future__ import annotations

import numpy as np
from PIL import Image

# 65535 / 255 == 257 exactly, so v / 257 maps the 16-bit range onto the 8-bit range end to end.
_UINT16_PER_UINT8 = 257
_UINT8_MAX = 255
_UINT16_MAX = 65535


def to_rgb(image: Image.Image) -> Image.Image:
    """The 8-bit RGB version of `image` (the image itself when it already is RGB).

    Raises:
        TypeError: `image` is not a PIL image.
        ValueError: the image has no pixels, or its mode or values have no 8-bit RGB meaning.
    """
    if not isinstance(image, Image.Image):
        raise TypeError(f"expected a PIL.Image.Image, got {type(image).__name__}")
    width, height = image.size
    if width == 0 or height == 0:
        raise ValueError(f"image has size {width}x{height} (width x height); it needs at least one pixel")
    if image.mode == "RGB":
        return image
    if image.mode.startswith("I;16") or image.mode in ("I", "F"):
        return Image.fromarray(_high_depth_to_uint8(image)).convert("RGB")
    try:
        return image.convert("RGB")
    except (ValueError, OSError) as error:
        raise ValueError(
            f"cannot convert an image of mode {image.mode!r} to RGB ({error}); "
            "convert it to 'RGB' or 'L' yourself before passing it"
        ) from error


def _high_depth_to_uint8(image: Image.Image) -> np.ndarray:
    """(H, W) uint8 array of a single-channel 16/32-bit integer or float image (rules in the module doc)."""
    values = np.asarray(image)
    if image.mode == "F":
        return _float_to_uint8(values, image.mode)
    low, high = int(values.min()), int(values.max())
    if low < 0 or high > _UINT16_MAX:
        raise ValueError(
            f"image of mode {image.mode!r} has values in [{low}, {high}], outside 0..65535; "
            "rescale it to 8 bits (mode 'L') yourself"
        )
    if image.mode == "I" and high <= _UINT8_MAX:
        return values.astype(np.uint8)
    # Round-half-up integer division: (v + 128) // 257 == round(v * 255 / 65535) for all v in range.
    return ((values.astype(np.uint32) + _UINT16_PER_UINT8 // 2) // _UINT16_PER_UINT8).astype(np.uint8)


def _float_to_uint8(values: np.ndarray, mode: str) -> np.ndarray:
    if not np.isfinite(values).all():
        raise ValueError(f"image of mode {mode!r} contains NaN or infinite values; clean it up first")
    low, high = float(values.min()), float(values.max())
    if low < 0 or high > _UINT8_MAX:
        raise ValueError(
            f"image of mode {mode!r} has values in [{low}, {high}]; expected [0, 1] or [0, 255]. "
            "Rescale it to 8 bits (mode 'L') yourself"
        )
    scaled = values * _UINT8_MAX if high <= 1 else values
    return np.rint(scaled).astype(np.uint8)
