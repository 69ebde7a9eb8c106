"""The accelerated HD transform: the same bytes as the reference in image_processing.py, faster.

Phi3VImageProcessor uses these functions unless its `accelerated` attribute is False; tests check both
give bit-identical pixel values (tests/test_image_kernels.py) and benchmarks/processor.py times them.

- Canvas: the C kernels of `_hd_canvas.c` (built by setup.py on x86-64 with AVX2) resize straight
  from the image's memory into planar uint8 canvas planes, bit-identical to Pillow's bilinear resize.
  Where they are not built or the CPU lacks AVX2, Pillow resizes (portrait images transposed like in
  the reference, then transposed back) and the planes are read without copies through Arrow.
- Local crops: the C kernels write them by a per-channel table lookup that holds the reference's own
  float32 results for each byte value; without them, the reference's float32 ops in the same order.
- Global view: a bicubic downscale by an integer factor (canvas sides are multiples of 336) has fixed
  rational tap weights, computed exactly in integers on the uint8 canvas with packed numpy lanes in
  per-thread buffers; only the 336x336 result is normalised, with the reference's float32 ops.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable

import numpy as np
import pyarrow as pa
import torch
from PIL import Image

from .image_geometry import CROP, WHITE, HDGeometry

try:  # optional C kernels (setup.py); without them the same output comes from Pillow + numpy
    from . import _hd_canvas
except ImportError:  # pragma: no cover - depends on the build
    _hd_canvas = None

Planes = tuple[np.ndarray, np.ndarray, np.ndarray]  # the R, G, B planes of a canvas, (H, W) uint8 each

# Bicubic (Keys, a = -0.75 as in torch's interpolate) downscale by an integer factor s with
# align_corners=False samples source position s*i + (s-1)/2. Odd s: an integer position, the
# weights are (0, 1, 0, 0), i.e. plain sampling. Even s: fraction 1/2, weights
# (-0.09375, 0.59375, 0.59375, -0.09375) = (-3, 19, 19, -3) / 32, exact in binary.
_EVEN_TAPS = (-3, 19, 19, -3)
_EVEN_DENOMINATOR = 32


def empty_float32(shape: tuple[int, ...] | torch.Size) -> torch.Tensor:
    """Uninitialised float32 tensor backed by numpy memory. numpy asks Linux for transparent huge
    pages on large arrays (torch's allocator does not): for the 23 MB-per-image output that is ~20x
    fewer page faults, measured 4x faster to fill a 2-image batch."""
    return torch.from_numpy(np.empty(tuple(shape), dtype=np.float32))


def render_planes(rgb: Image.Image, geometry: HDGeometry) -> Planes:
    """The uint8 canvas in the image's own orientation: transpose if portrait, resize, transpose
    back, pad with white. The planes are read-only, and views of a per-thread workspace (the next
    call overwrites them) when the C kernels render them or the image needs padding."""
    if _hd_canvas is not None and _hd_canvas.available():
        return _render_planes_natively(rgb, geometry)
    image = rgb.transpose(Image.Transpose.TRANSPOSE) if geometry.transposed else rgb
    # The reference's exact call; the canvases must equal the golden PNGs bit for bit.
    image = image.resize((geometry.width, geometry.height), Image.BILINEAR)
    if geometry.transposed:
        # Back to the image's orientation, so that crops and global view need no transposed reads
        # or writes. Measured against converting the landscape crops with transposed reads and
        # writing the global view transposed: 0.5-0.9 ms faster for a 672x504 image, 1-1.3 ms
        # slower for 1344x1008, where PIL's transpose meets more cache misses.
        image = image.transpose(Image.Transpose.TRANSPOSE)
    bands = _bands(image)
    if geometry.padded_height == geometry.height:
        return bands  # no padding: the canvas is the image, used without a copy
    canvas, before = _canvas_workspace(geometry)
    after = before + geometry.height
    # The padded axis: rows (top/bottom) of a landscape image, columns (left/right) of a portrait.
    padded = canvas.transpose(0, 2, 1) if geometry.transposed else canvas
    padded[:, :before] = WHITE
    padded[:, after:] = WHITE
    for plane, band in zip(padded[:, before:after], bands, strict=True):
        plane[...] = band.T if geometry.transposed else band
    canvas.flags.writeable = False
    return tuple(canvas)


def write_local_crops(
    planes: Planes, out: torch.Tensor, table: np.ndarray, normalise_: Callable[[torch.Tensor], torch.Tensor]
) -> None:
    """Fill `out` (num_crops, 3, 336, 336) with the normalised crops of the uint8 canvas
    `planes` (3 x (H, W)), row-major, then zeros. `table` (3, 256) float32 holds the normalised
    value of each byte per channel; `normalise_` is the reference's in-place normalisation."""
    rows, cols = planes[0].shape[0] // CROP, planes[0].shape[1] // CROP
    if _hd_canvas is not None:  # a table lookup per byte: 3x faster than the float ops below
        _hd_canvas.normalise_crops(*planes, *planes[0].shape, table, out.numpy())
        out[rows * cols :].zero_()
        return
    for index in range(rows * cols):
        row, col = divmod(index, cols)
        crop = out[index]
        for target, plane in zip(crop.numpy(), planes, strict=True):  # uint8 -> float32
            np.copyto(target, plane[row * CROP : (row + 1) * CROP, col * CROP : (col + 1) * CROP])
        # One crop at a time: the 1.35 MB float block stays in cache across the passes.
        normalise_(crop)
    out[rows * cols :].zero_()


def write_global_view(
    planes: Planes, out: np.ndarray, image_mean: tuple[float, ...], image_std: tuple[float, ...]
) -> None:
    """`out` (3, 336, 336) = bicubic resize of the normalised canvas `planes` (3 x (H, W) uint8)
    to 336x336: the integer resize of image_processing.global_view with packed lanes.

    The normalisation, folded with the weights' denominators, is applied to the 336x336 result only,
    by the same float32 ops as the reference function."""
    for plane, target, mean, std in zip(planes, out, image_mean, image_std, strict=True):
        columns, column_divisor = _downscale_columns(plane)
        # x / 255 then (x - mean) / std, x being the sums still to be divided by their divisor.
        _downscale_rows(columns, target, 1 / (column_divisor * 255 * std), -mean / std)


def _downscale_columns(plane: np.ndarray) -> tuple[np.ndarray, int]:
    """Bicubic downscale of the rows of `plane` (H, 336 * factor) uint8 to 336 columns with the
    integer weights: (weighted sums (H, 336), their divisor). Odd factors sample one column (a
    strided uint8 view); even factors give int16 sums, in [-1530, 9690], in a per-thread workspace.

    Strided numpy loops are ~5x slower than contiguous ones, so the taps are not sliced with a
    step: the uint8 columns are read through uint16 or uint32 views of their byte pairs or quads
    (little-endian: the lowest byte is the leftmost column)."""
    height, width = plane.shape
    factor = width // CROP
    if factor % 2 == 1:  # weights (0, 1, 0, 0): the single tap factor*j + (factor-1)/2
        return plane[:, (factor - 1) // 2 :: factor], 1
    if factor == 2:  # taps 2j-1, 2j, 2j+1, 2j+2: the pairs j-1, j and j+1
        inner, outer, odd = _workspace("global columns", *[((height, CROP), np.uint16)] * 3)
        pairs = plane.view("<u2")
        even = np.bitwise_and(pairs, 0xFF, out=inner)
        np.right_shift(pairs, 8, out=odd)
        # Outer taps odd[j-1] + even[j+1], computed on the flattened arrays (one contiguous loop
        # instead of one per row); the first and last column, wrong there, are redone with the
        # edge clamped as torch does: tap -1 reads column 0, tap 2*336 the last column.
        np.add(odd.ravel()[:-2], even.ravel()[2:], out=outer.ravel()[1:-1])
        np.add(even[:, 0], even[:, 1], out=outer[:, 0])
        np.add(odd[:, -2], odd[:, -1], out=outer[:, -1])
        np.add(even, odd, out=inner)
        # 19 * inner - 3 * outer; uint16 arithmetic wraps around, the result fits int16.
        np.multiply(inner, _EVEN_TAPS[1], out=inner)
        np.multiply(outer, -_EVEN_TAPS[0], out=outer)
        return np.subtract(inner, outer, out=inner).view(np.int16), _EVEN_DENOMINATOR
    # factor >= 4: the taps factor*j + first + (0, 1, 2, 3) are 4 bytes of group j, read as one
    # uint32 b0 + b1 * 2**8 + b2 * 2**16 + b3 * 2**24. Split into 16-bit lanes, low = b0 + b2 * 2**16
    # and high = b1 + b3 * 2**16, one wrapping uint32 multiply-add puts the weighted sum in the upper
    # lane: low * (w2 + w0 * 2**16) + high * (w3 + w1 * 2**16) = sum * 2**16 + w2 * b0 + w3 * b1
    # (mod 2**32), and the last term, in [-765, 4845], vanishes in the rounding shift
    # (t + 2**15) >> 16. 8 contiguous passes: 1.6x faster than 4 strided taps (factor 4).
    low, high = _workspace("global columns", *[((height, CROP), np.uint32)] * 2)
    first = factor // 2 - 2
    window = plane.reshape(height, CROP, factor)[:, :, first : first + 4]
    if factor == 4:
        quads = window.view("<u4")[:, :, 0]
    else:  # gather the windows first (rare factors: only panoramas reach 6 or more)
        quads = low.view(np.uint8).reshape(height, CROP, 4)
        np.copyto(quads, window)
        quads = quads.view("<u4")[:, :, 0]
    np.right_shift(quads, 8, out=high)
    np.bitwise_and(high, 0x00FF00FF, out=high)
    np.bitwise_and(quads, 0x00FF00FF, out=low)
    w0, w1, w2, w3 = _EVEN_TAPS
    np.multiply(low, (w2 + w0 * 2**16) % 2**32, out=low)
    np.multiply(high, (w3 + w1 * 2**16) % 2**32, out=high)
    np.add(low, high, out=low)
    np.add(low, 2**15, out=low)
    sums = high.reshape(-1).view(np.int16)[: height * CROP].reshape(height, CROP)
    return np.right_shift(low.view(np.int32), 16, out=sums, casting="unsafe"), _EVEN_DENOMINATOR


def _downscale_rows(columns: np.ndarray, out: np.ndarray, scale: float, shift: float) -> None:
    """out (336, 336) float32 = scale * (bicubic downscale of `columns` (336 * factor, 336), int16
    or uint8 sums, to 336 rows, with the integer weights over their divisor) + shift."""
    factor = columns.shape[0] // CROP
    if factor % 2 == 1:  # a single tap row
        np.multiply(columns[(factor - 1) // 2 :: factor], np.float32(scale), out=out)
        np.add(out, np.float32(shift), out=out)
        return
    # Sums of two int16 column sums stay within int16.
    inner, outer, product = _workspace(
        "global rows", ((CROP, CROP), np.int16), ((CROP, CROP), np.int16), ((CROP, CROP), np.float32)
    )
    if factor == 2:  # taps 2i-1, 2i, 2i+1, 2i+2, clamped at the first and last row
        np.add(columns[0::2], columns[1::2], out=inner, dtype=np.int16)
        np.add(columns[1:-3:2], columns[4::2], out=outer[1:-1], dtype=np.int16)
        np.add(columns[0], columns[2], out=outer[0], dtype=np.int16)
        np.add(columns[-3], columns[-1], out=outer[-1], dtype=np.int16)
    else:  # taps factor*i + first + (0, 1, 2, 3)
        first = factor // 2 - 2
        taps = [columns[first + k :: factor] for k in range(4)]
        np.add(taps[1], taps[2], out=inner, dtype=np.int16)
        np.add(taps[0], taps[3], out=outer, dtype=np.int16)
    # 19 * inner - 3 * outer needs 19 bits: weighted in float32, where it is still exact.
    scale /= _EVEN_DENOMINATOR
    np.multiply(inner, np.float32(_EVEN_TAPS[1] * scale), out=out)
    np.multiply(outer, np.float32(_EVEN_TAPS[0] * scale), out=product)
    np.add(out, product, out=out)
    np.add(out, np.float32(shift), out=out)


_WORKSPACE = threading.local()


def _workspace(name: str, *specs: tuple[tuple[int, ...], type]) -> list[np.ndarray]:
    """Scratch arrays of the given (shape, dtype), carved from a per-thread byte buffer `name` that
    is reused across calls. Writing to fresh memory page-faults on every 4 KiB page, measured at
    ~6 us a page in a VM: more than the arithmetic. Each buffer keeps the largest size seen."""
    sizes = [math.prod(shape) * np.dtype(dtype).itemsize for shape, dtype in specs]
    starts = [64 * math.ceil(sum(sizes[:k]) / 64) for k in range(len(sizes))]  # 64-byte aligned
    buffers = _WORKSPACE.__dict__.setdefault("buffers", {})
    if name not in buffers or buffers[name].size < starts[-1] + sizes[-1]:
        buffers[name] = np.empty(starts[-1] + sizes[-1], dtype=np.uint8)
    buffer = buffers[name]
    return [
        buffer[start : start + size].view(dtype).reshape(shape)
        for (shape, dtype), start, size in zip(specs, starts, sizes, strict=True)
    ]


def _render_planes_natively(rgb: Image.Image, geometry: HDGeometry) -> Planes:
    """`render_planes` by the C kernels, which resize bit-identically to Pillow (see
    _hd_canvas.c) straight from the image's memory, 4 bytes R, G, B, X a pixel, read without a copy
    through the Arrow C data interface (Pillow >= 11.2). Pillow keeps images over 16 MB in several
    memory blocks, which it cannot export so: those (and all images on older Pillow) are copied out
    first, ~1.3 ms a megapixel. Measured for a 3000x2000 photo at num_crops 16: 8 ms of copy, 30 ms
    for the whole processor, 65 ms with Pillow's resize."""
    source = _exported_pixels(rgb, 4)
    if source is None:
        source = rgb.tobytes("raw", "RGBX")
    canvas, before = _canvas_workspace(geometry)
    _hd_canvas.render_canvas(
        source, rgb.width, rgb.height, 4 * rgb.width, geometry.transposed, geometry.width, geometry.height, before,
        canvas,
    )
    canvas.flags.writeable = False
    return tuple(canvas)


def _bands(image: Image.Image) -> Planes:
    """The R, G, B planes of an RGB image, read-only (H, W) uint8 arrays.

    Pillow >= 11.2 exports image memory through the Arrow C data interface, which pyarrow (a
    dependency already) wraps without a copy: split() reads the 4-byte pixels once, while packing
    one band per call with tobytes reads them three times and copies each band twice (chunks, then
    join). Measured 0.2 ms an image faster for 672x672 canvases, 1.6 ms for 1344x1344. Images
    whose rows span several memory blocks (bands over 16 MB by default) are not exportable."""
    shape = (image.height, image.width)
    exported = [_exported_pixels(band, 1) for band in image.split()] if hasattr(image, "__arrow_c_array__") else [None]
    if all(band is not None for band in exported):
        return tuple(np.frombuffer(band, np.uint8).reshape(shape) for band in exported)
    # Older Pillow or multi-block image: one band per raw-encoder call, 2x faster than split() +
    # np.asarray and 5x faster than numpy's HWC -> CHW transpose of np.asarray(image).
    return tuple(np.frombuffer(image.tobytes("raw", band), np.uint8).reshape(shape) for band in "RGB")


def _canvas_workspace(geometry: HDGeometry) -> tuple[np.ndarray, int]:
    """(canvas, before): the per-thread (3, H, W) uint8 canvas workspace for `geometry`, and where
    the resized image starts along the padded axis (the floor of half the padding)."""
    canvas_width, canvas_height = geometry.canvas_size
    (canvas,) = _workspace("canvas", ((3, canvas_height, canvas_width), np.uint8))
    return canvas, geometry.padding_before


def _exported_pixels(image: Image.Image, bytes_per_pixel: int) -> memoryview | None:
    """The pixel bytes of `image` without a copy, through the Arrow C data interface of Pillow >=
    11.2 (pyarrow wraps the image's own memory): 1 byte a pixel for a single band, 4 (R, G, B, X)
    for RGB. None when the image cannot be exported so (older Pillow, or rows in several memory
    blocks: images over 16 MB by default) or its layout is not `bytes_per_pixel`."""
    if not hasattr(image, "__arrow_c_array__"):
        return None
    try:
        exported = pa.array(image)
    except ValueError:  # "Image rows are not contiguous in memory"
        return None
    values, offset = exported, exported.offset
    if pa.types.is_fixed_size_list(exported.type):  # multi-band: one list of bytes a pixel
        values, offset = exported.values, exported.values.offset + exported.type.list_size * exported.offset
    length = bytes_per_pixel * image.width * image.height
    if values.type != pa.uint8() or len(values) - (offset - values.offset) < length:
        return None
    return memoryview(values.buffers()[1])[offset : offset + length]
