"""Phi-3-Vision image processor: the "HD transform" of the original, reimplemented for speed.

Per image: convert to 8-bit RGB, resize (PIL bilinear) to a grid of at most `num_crops` 336x336
crops keeping the aspect ratio, pad top/bottom with white, then emit
[global 336x336 view, local crops row-major, zero crops up to num_crops + 1], CLIP-normalised.

Speed (see benchmarks/processor.py): the output is written in place, crop by crop, from the uint8
canvas. The normalisation uses the reference's own float32 ops in the same order, so local crops
are bit-identical to it. The global view is a bicubic downscale by an integer factor (canvas sides
are multiples of 336), which reduces to fixed rational tap weights and is computed exactly in
integers on the uint8 canvas; only the 336x336 result is normalised.
"""

from __future__ import annotations

import json
import math
import operator
import os
import threading
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from PIL import Image
from transformers.image_processing_utils import BaseImageProcessor

from .image_modes import to_rgb

__all__ = [
    "OPENAI_CLIP_MEAN",
    "OPENAI_CLIP_STD",
    "HDGeometry",
    "Phi3VImageProcessor",
    "hd_geometry",
    "num_image_tokens_for",
    "to_rgb",
]

OPENAI_CLIP_MEAN: tuple[float, float, float] = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD: tuple[float, float, float] = (0.26862954, 0.26130258, 0.27577711)
CONFIG_NAME = "preprocessor_config.json"
_CONFIG_KEYS = ("num_crops", "image_mean", "image_std", "num_img_tokens")
# Loader arguments AutoImageProcessor.from_pretrained forwards; meaningless for a local directory.
_LOADER_KWARGS = frozenset(
    "_from_auto _from_pipeline revision cache_dir token local_files_only force_download proxies subfolder "
    "code_revision return_unused_kwargs".split()
)
CROP = 336  # CLIP ViT-L/14-336 input side; the HD grid is made of CROP x CROP tiles
WHITE = 255  # padding value of the uint8 canvas

# Bicubic (Keys, a = -0.75 as in torch's interpolate) downscale by an integer factor s with
# align_corners=False samples source position s*i + (s-1)/2. Odd s: an integer position, the
# weights are (0, 1, 0, 0), i.e. plain sampling. Even s: fraction 1/2, weights
# (-0.09375, 0.59375, 0.59375, -0.09375) = (-3, 19, 19, -3) / 32, exact in binary.
_EVEN_TAPS = (-3, 19, 19, -3)
_EVEN_DENOMINATOR = 32


class HDGeometry(NamedTuple):
    """HD transform sizes, in the landscape frame (after transposing portrait images)."""

    transposed: bool  # the image was narrower than tall and is handled transposed
    width: int  # resized width = scale * 336
    height: int  # resized height before padding
    padded_height: int  # height padded with white to a multiple of 336

    @property
    def canvas_size(self) -> tuple[int, int]:
        """(width, height) of the padded canvas in the image's own orientation."""
        if self.transposed:
            return self.padded_height, self.width
        return self.width, self.padded_height


def hd_geometry(width: int, height: int, num_crops: int) -> HDGeometry:
    """Pure arithmetic of the reference HD transform (no pixels touched)."""
    transposed = width < height
    if transposed:
        width, height = height, width
    ratio = width / height  # float, exactly as the reference computes it
    scale = 1
    while (scale + 1) * math.ceil((scale + 1) / ratio) <= num_crops:
        scale += 1
    new_width = scale * CROP
    new_height = int(new_width / ratio)
    padded_height = -(-new_height // CROP) * CROP  # ceil to a multiple of 336; 0 stays 0
    return HDGeometry(transposed, new_width, new_height, padded_height)


def num_image_tokens_for(canvas_width: int, canvas_height: int, tokens_per_crop: int = 144) -> int:
    """Image tokens of a canvas: every crop (h*w local + 1 global) gives `tokens_per_crop` tokens,
    plus one separator after each of the h+1 token rows (rows are sqrt(tokens_per_crop) = 12 wide)
    of the local grid and the global view, plus one separator between local grid and global view."""
    rows, cols = canvas_height // CROP, canvas_width // CROP
    return (rows * cols + 1) * tokens_per_crop + 1 + (rows + 1) * math.isqrt(tokens_per_crop)


class Phi3VImageProcessor(BaseImageProcessor):
    """Turns PIL images into `pixel_values`, `image_sizes` and image-token counts for Phi-3-V.

    Subclasses transformers' BaseImageProcessor only so AutoImageProcessor accepts the class;
    loading, saving and processing are all defined here."""

    crop_size: int = CROP
    model_input_names = ["pixel_values", "image_sizes"]

    def __init__(
        self,
        num_crops: int = 16,
        image_mean: tuple[float, float, float] = OPENAI_CLIP_MEAN,
        image_std: tuple[float, float, float] = OPENAI_CLIP_STD,
        num_img_tokens: int = 144,
    ) -> None:
        super().__init__()
        self.num_crops = _positive_int("num_crops", num_crops)
        self.num_img_tokens = _positive_int("num_img_tokens", num_img_tokens)
        if math.isqrt(self.num_img_tokens) ** 2 != self.num_img_tokens:
            raise ValueError(
                f"num_img_tokens must be a square (tokens form a square grid), got {num_img_tokens}"
            )
        self.image_mean = _channel_triple("image_mean", image_mean)
        self.image_std = _channel_triple("image_std", image_std)
        if min(self.image_std) <= 0:
            raise ValueError(f"image_std must be positive, got {self.image_std}")
        # float32 (3, 1, 1), as torchvision's Normalize builds them from the same Python floats.
        self._mean = torch.tensor(self.image_mean, dtype=torch.float32).view(3, 1, 1)
        self._std = torch.tensor(self.image_std, dtype=torch.float32).view(3, 1, 1)

    # ---- configuration -------------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike, **overrides) -> Phi3VImageProcessor:
        """Load `directory/preprocessor_config.json` (defaults when absent); `overrides` win.
        Other keys of the file (auto_map, processor_class, ...) are ignored."""
        path = Path(directory) / CONFIG_NAME
        stored = json.loads(path.read_text()) if path.is_file() else {}
        overrides = {key: value for key, value in overrides.items() if key not in _LOADER_KWARGS}
        return cls.from_dict(stored, **overrides)

    @classmethod
    def from_dict(cls, config: dict, **overrides) -> Phi3VImageProcessor:
        """Build from a preprocessor_config.json dict; unknown config keys are ignored, unknown
        `overrides` raise TypeError."""
        kwargs = {key: config[key] for key in _CONFIG_KEYS if key in config}
        return cls(**(kwargs | overrides))

    def save_pretrained(self, directory: str | os.PathLike) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        (directory / CONFIG_NAME).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    def to_dict(self) -> dict:
        return {
            "image_processor_type": type(self).__name__,
            "processor_class": "Phi3VProcessor",
            "num_crops": self.num_crops,
            "image_mean": list(self.image_mean),
            "image_std": list(self.image_std),
            "num_img_tokens": self.num_img_tokens,
        }

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.to_dict()})"

    # ---- sizes ---------------------------------------------------------------------------------
    def hd_canvas_size(self, width: int, height: int) -> tuple[int, int]:
        """(width, height) of the padded canvas for an image of this size; a side may be 0 for
        extreme aspect ratios (the reference's arithmetic, which `__call__` then rejects)."""
        return hd_geometry(width, height, self.num_crops).canvas_size

    def num_image_tokens(self, width: int, height: int) -> int:
        """Number of image tokens the prompt reserves for an image of this size."""
        return num_image_tokens_for(*self.hd_canvas_size(width, height), self.num_img_tokens)

    # ---- pixels --------------------------------------------------------------------------------
    def hd_canvas(self, image: Image.Image) -> np.ndarray:
        """uint8 (H, W, 3) canvas: the RGB image resized and padded, before cropping."""
        rgb = to_rgb(image)
        geometry = self._checked_geometry(rgb)
        planes = _render_planes(rgb, geometry)  # (3, H, W) of the landscape frame
        return np.ascontiguousarray(
            planes.permute(2, 1, 0) if geometry.transposed else planes.permute(1, 2, 0)
        )

    def __call__(self, images: Image.Image | list[Image.Image], return_tensors: str | None = "pt") -> dict:
        """pixel_values float32 (n, num_crops+1, 3, 336, 336); image_sizes int64 (n, 2) = canvas
        (height, width); num_img_tokens list[int]. return_tensors "pt" gives torch tensors,
        "np" or None numpy arrays."""
        if return_tensors not in ("pt", "np", None):
            raise ValueError(f"return_tensors must be 'pt', 'np' or None, got {return_tensors!r}")
        images = [images] if isinstance(images, Image.Image) else list(images)
        if not images:
            raise ValueError("no images given; pass at least one PIL image")
        rgbs = [to_rgb(image) for image in images]
        geometries = [self._checked_geometry(rgb) for rgb in rgbs]  # fail before any pixel work
        pixel_values = _empty_float32((len(rgbs), self.num_crops + 1, 3, CROP, CROP))
        for rgb, geometry, out in zip(rgbs, geometries, pixel_values, strict=True):
            planes = _render_planes(rgb, geometry)  # (3, H, W) of the landscape frame
            # Portrait images are processed transposed, like the reference: the global view of the
            # landscape frame is the transpose of the image's, written through a transposed view.
            self._write_global_view(planes, out[0].transpose(1, 2) if geometry.transposed else out[0])
            self._write_local_crops(planes, out[1:], geometry.transposed)
        sizes = [geometry.canvas_size for geometry in geometries]  # (width, height)
        image_sizes = torch.tensor([[h, w] for w, h in sizes], dtype=torch.int64)
        counts = [num_image_tokens_for(w, h, self.num_img_tokens) for w, h in sizes]
        if return_tensors != "pt":
            pixel_values, image_sizes = pixel_values.numpy(), image_sizes.numpy()
        return {"pixel_values": pixel_values, "image_sizes": image_sizes, "num_img_tokens": counts}

    def preprocess(self, images: Image.Image | list[Image.Image], return_tensors: str | None = "pt") -> dict:
        """Alias of `__call__` (transformers' name)."""
        return self(images, return_tensors=return_tensors)

    def _checked_geometry(self, image: Image.Image) -> HDGeometry:
        geometry = hd_geometry(image.width, image.height, self.num_crops)
        if geometry.height == 0:
            raise ValueError(
                f"image of size {image.width}x{image.height} (width x height) is too elongated for "
                f"num_crops={self.num_crops}: its short side would be resized to 0 pixels; "
                "crop or pad it to a less extreme aspect ratio"
            )
        return geometry

    def _normalise_(self, pixels: torch.Tensor) -> torch.Tensor:
        """In place: torchvision ToTensor's / 255 then Normalize, the same float32 ops in the same
        order as the reference, hence bit-identical results."""
        return pixels.div_(255).sub_(self._mean).div_(self._std)

    def _write_local_crops(self, planes: torch.Tensor, out: torch.Tensor, transposed: bool) -> None:
        """Fill `out` (num_crops, 3, 336, 336) with the normalised crops of the uint8 landscape-frame
        `planes` (3, H, W), row-major in the image's own orientation, then zeros. For a portrait
        image, crop (r, c) is landscape crop (c, r) transposed."""
        rows, cols = planes.shape[1] // CROP, planes.shape[2] // CROP
        image_cols = rows if transposed else cols
        (staging,) = _workspace("crop", ((3, CROP, CROP), torch.uint8))
        for index in range(rows * cols):
            row, col = divmod(index, image_cols)
            if transposed:
                row, col = col, row
            crop = planes[:, row * CROP : (row + 1) * CROP, col * CROP : (col + 1) * CROP]
            if transposed:  # numpy transposes a cache-sized uint8 block 2x faster than torch
                np.copyto(staging.numpy(), crop.numpy().transpose(0, 2, 1))
                crop = staging
            # One crop at a time: the 1.35 MB float block stays in cache across the four passes.
            self._normalise_(out[index].copy_(crop))
        out[rows * cols :].zero_()

    def _write_global_view(self, planes: torch.Tensor, out: torch.Tensor) -> None:
        """`out` (3, 336, 336) = bicubic resize of the normalised canvas `planes` (3, H, W) to 336x336.

        Bicubic weights sum to 1, so resizing commutes with the per-channel affine normalisation:
        we resize the uint8 canvas exactly (integer weights; sums stay below 2**24, exact in float32)
        and normalise only the 336x336 result. Differs from the reference (float32 resize of the
        normalised canvas) by rounding only, < 1e-6 on the golden images."""
        # uint8 * (-3, 19, 19, -3) sums lie in [-1530, 11220]: int16; the second pass needs 32 times
        # more, below 2**24, so float32 is still exact.
        width = planes.shape[2]
        v_sum, v_scratch, h_scratch = _workspace(
            "global",
            ((3, CROP, width), torch.int16),
            ((3, CROP, width), torch.int16),
            ((3, CROP, CROP), torch.float32),
        )
        vertical, v_divisor = _bicubic_sum(planes, 1, v_sum, v_scratch)  # (3, 336, W)
        both, h_divisor = _bicubic_sum(vertical, 2, out, h_scratch)  # (3, 336, 336)
        if both is not out:
            out.copy_(both)
        self._normalise_(out.div_(v_divisor * h_divisor))


def _bicubic_sum(
    values: torch.Tensor, dim: int, out: torch.Tensor, scratch: torch.Tensor
) -> tuple[torch.Tensor, int]:
    """Bicubic downscale of `values` along `dim` (length 336 * factor) to 336 with the integer
    weights: (weighted sums, divisor). The sums are a view of `values` for odd factors (one tap of
    weight 1), else written into `out`, whose dtype accumulates. Only same-dtype in-place ops:
    mixed-dtype ones take a slow casting path in torch."""
    factor = values.shape[dim] // CROP
    grouped = values.unflatten(dim, (CROP, factor))  # element e of group i = source factor*i + e
    if factor % 2 == 1:  # weights (0, 1, 0, 0): the single tap factor*i + (factor-1)/2
        return grouped.select(dim + 1, (factor - 1) // 2), 1
    first = factor // 2 - 2  # taps at factor*i + first + k, k = 0..3
    _copy_tap(out, grouped, dim, first + 1)
    _copy_tap(scratch, grouped, dim, first + 2)
    out.add_(scratch).mul_(_EVEN_TAPS[1])
    for offset in (first, first + 3):
        _copy_tap(scratch, grouped, dim, offset)
        out.add_(scratch, alpha=_EVEN_TAPS[0])
    return out, _EVEN_DENOMINATOR


def _copy_tap(out: torch.Tensor, grouped: torch.Tensor, dim: int, offset: int) -> None:
    """out[..., i, ...] = source element factor*i + offset along `dim` of `grouped` (source dim
    split into (336, factor)); indices outside the source repeat the edge, as torch's bicubic
    clamps them. Only factor 2 reaches outside (offsets -1 and 2), by one group at most."""
    factor = grouped.shape[dim + 1]
    shift, element = divmod(offset, factor)  # shift -1 / +1: the neighbouring group
    source = grouped.select(dim + 1, element)
    inner = CROP - 1
    if shift == 0:
        out.copy_(source)
    elif shift == -1:  # output i reads group i - 1; output 0 reads source index 0
        out.narrow(dim, 1, inner).copy_(source.narrow(dim, 0, inner))
        out.narrow(dim, 0, 1).copy_(grouped.select(dim + 1, 0).narrow(dim, 0, 1))
    else:  # shift +1: output i reads group i + 1; the last output reads the last source index
        out.narrow(dim, 0, inner).copy_(source.narrow(dim, 1, inner))
        out.narrow(dim, inner, 1).copy_(grouped.select(dim + 1, factor - 1).narrow(dim, inner, 1))


_WORKSPACE = threading.local()


def _workspace(name: str, *specs: tuple[tuple[int, ...], torch.dtype]) -> list[torch.Tensor]:
    """Scratch tensors of the given (shape, dtype), carved from a per-thread byte buffer `name` that
    is reused across calls. Writing to fresh memory page-faults on every 4 KiB page, measured at
    ~6 us a page in a VM: 8 ms for the global view of a 1344x1344 canvas, more than the arithmetic.
    Each buffer keeps the largest size seen (6 MB for the global view of a 1344-wide canvas)."""
    sizes = [math.prod(shape) * dtype.itemsize for shape, dtype in specs]
    buffers = _WORKSPACE.__dict__.setdefault("buffers", {})
    if name not in buffers or buffers[name].numel() < sum(sizes):
        buffers[name] = torch.empty(sum(sizes), dtype=torch.uint8)
    views, start = [], 0
    for (shape, dtype), size in zip(specs, sizes, strict=True):  # sizes are multiples of 4: aligned
        views.append(buffers[name][start : start + size].view(dtype).view(shape))
        start += size
    return views


def _empty_float32(shape: tuple[int, ...] | torch.Size) -> torch.Tensor:
    """Uninitialised float32 tensor backed by numpy memory. numpy asks Linux for transparent huge
    pages on large arrays (torch's allocator does not): for the 23 MB-per-image output that is ~20x
    fewer page faults, measured 4x faster to fill a 2-image batch."""
    return torch.from_numpy(np.empty(tuple(shape), dtype=np.float32))


def _render_planes(rgb: Image.Image, geometry: HDGeometry) -> torch.Tensor:
    """uint8 (3, H, W) canvas in the landscape frame: transpose if portrait, resize, pad top/bottom
    white. Portrait images are left transposed; callers transpose views instead of pixels."""
    image = rgb.transpose(Image.Transpose.TRANSPOSE) if geometry.transposed else rgb
    # The reference's exact call; the canvases must equal the golden PNGs bit for bit.
    image = image.resize((geometry.width, geometry.height), Image.BILINEAR)
    top = (geometry.padded_height - geometry.height) // 2  # top gets the floor of half the padding
    bottom = top + geometry.height
    planes = np.empty((3, geometry.padded_height, geometry.width), dtype=np.uint8)
    planes[:, :top] = WHITE
    planes[:, bottom:] = WHITE
    # The raw encoder packs one band per call ("R", "G", "B" raw modes): 2x faster than split()
    # + asarray, and 5x faster than numpy's HWC -> CHW transpose of np.asarray(image).
    for plane, band in zip(planes, "RGB", strict=True):
        pixels = np.frombuffer(image.tobytes("raw", band), dtype=np.uint8)
        plane[top:bottom] = pixels.reshape(geometry.height, geometry.width)
    return torch.from_numpy(planes)


def _positive_int(name: str, value: object) -> int:
    try:
        number = operator.index(value)
    except TypeError:
        raise TypeError(f"{name} must be an integer, got {value!r}") from None
    if number < 1:
        raise ValueError(f"{name} must be >= 1, got {value}")
    return number


def _channel_triple(name: str, values: object) -> tuple[float, float, float]:
    triple = tuple(float(v) for v in values)
    if len(triple) != 3:
        raise ValueError(f"{name} needs one value per RGB channel, got {values!r}")
    return triple
