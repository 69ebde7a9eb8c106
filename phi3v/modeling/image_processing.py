"""Phi-3-Vision image processor: the "HD transform" of the original, in its straightforward form.

Per image: convert to 8-bit RGB, resize (PIL bilinear) to a grid of at most `num_crops` 336x336
crops keeping the aspect ratio, pad top/bottom with white, then emit
[global 336x336 view, local crops row-major, zero crops up to num_crops + 1], CLIP-normalised.

This module is the reference a reader should open. The processor runs the accelerated version of
the same steps in image_kernels.py (C kernels, packed numpy lanes, per-thread buffers, zero-copy
Arrow reads: 4-5x faster than the functions here, measured for 1000x1000 and 600x800 photos at
num_crops 4 and 16; benchmarks/processor.py times it) unless `accelerated` is False. Both give
bit-identical pixel values (tests/test_image_kernels.py).
"""

from __future__ import annotations

import json
import math
import operator
import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from transformers.image_processing_utils import BaseImageProcessor

from . import image_kernels
from .image_geometry import CROP, WHITE, HDGeometry, hd_geometry, num_image_tokens_for
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
# Bicubic (Keys, a = -0.75, as torch's interpolate) downscale by an integer factor, align_corners=False:
# output i reads the 4 source taps factor*i + factor//2 - 2 + (0, 1, 2, 3), clamped at the edges.
# An odd factor samples tap 2 exactly (weights 0, 0, 1, 0); an even one reads halfway between taps 1
# and 2, weights (-3, 19, 19, -3) / 32, exact in binary.
_EVEN_WEIGHTS = (-3, 19, 19, -3)
_EVEN_DENOMINATOR = 32


class Phi3VImageProcessor(BaseImageProcessor):
    """Turns PIL images into `pixel_values`, `image_sizes` and image-token counts for Phi-3-V.

    Subclasses transformers' BaseImageProcessor only so AutoImageProcessor accepts the class;
    loading, saving and processing are all defined here."""

    crop_size: int = CROP
    model_input_names = ["pixel_values", "image_sizes"]
    # False: the reference functions of this module instead of image_kernels (same output, slower).
    accelerated: bool = True

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
        # The normalised value of each byte per channel, by the same ops: looking it up is
        # bit-identical to computing it.
        values = torch.arange(256, dtype=torch.float32).repeat(3, 1).view(3, 1, 256)
        self._table = self._normalise_(values).view(3, 256).numpy()

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
        if self.accelerated:
            return np.stack(image_kernels.render_planes(rgb, geometry), axis=-1)
        return render_canvas(rgb, geometry)

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
        if self.accelerated:
            pixel_values = self._accelerated_pixel_values(rgbs, geometries)
        else:
            pixel_values = torch.stack([self.pixel_values(rgb, g) for rgb, g in zip(rgbs, geometries, strict=True)])
        sizes = [geometry.canvas_size for geometry in geometries]  # (width, height)
        image_sizes = torch.tensor([[h, w] for w, h in sizes], dtype=torch.int64)
        counts = [num_image_tokens_for(w, h, self.num_img_tokens) for w, h in sizes]
        if return_tensors != "pt":
            pixel_values, image_sizes = pixel_values.numpy(), image_sizes.numpy()
        return {"pixel_values": pixel_values, "image_sizes": image_sizes, "num_img_tokens": counts}

    def preprocess(self, images: Image.Image | list[Image.Image], return_tensors: str | None = "pt") -> dict:
        """Alias of `__call__` (transformers' name)."""
        return self(images, return_tensors=return_tensors)

    def pixel_values(self, rgb: Image.Image, geometry: HDGeometry) -> torch.Tensor:
        """The reference transform of one RGB image: (num_crops + 1, 3, 336, 336) float32 =
        [global view, local crops row-major, zero crops]."""
        canvas = render_canvas(rgb, geometry)  # (H, W, 3) uint8
        normalised = self._normalise_(torch.from_numpy(canvas).permute(2, 0, 1).float())  # (3, H, W)
        _, height, width = normalised.shape
        crops = [
            normalised[:, top : top + CROP, left : left + CROP]
            for top in range(0, height, CROP)
            for left in range(0, width, CROP)
        ]
        out = torch.zeros(self.num_crops + 1, 3, CROP, CROP)
        out[0] = torch.from_numpy(global_view(canvas, self.image_mean, self.image_std))
        out[1 : 1 + len(crops)] = torch.stack(crops)
        return out

    def _accelerated_pixel_values(self, rgbs: list[Image.Image], geometries: list[HDGeometry]) -> torch.Tensor:
        """`pixel_values` of every image by image_kernels, bit-identical, into one preallocated batch."""
        pixel_values = image_kernels.empty_float32((len(rgbs), self.num_crops + 1, 3, CROP, CROP))
        for rgb, geometry, out in zip(rgbs, geometries, pixel_values, strict=True):
            planes = image_kernels.render_planes(rgb, geometry)
            # Local crops first, while the planes are still in cache: measured 2% faster.
            image_kernels.write_local_crops(planes, out[1:], self._table, self._normalise_)
            image_kernels.write_global_view(planes, out[0].numpy(), self.image_mean, self.image_std)
        return pixel_values

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


def render_canvas(rgb: Image.Image, geometry: HDGeometry) -> np.ndarray:
    """The reference's uint8 (H, W, 3) canvas: transpose a portrait image, resize (PIL bilinear),
    paste on white with the extra line of an odd padding after the image, transpose back."""
    landscape = rgb.transpose(Image.Transpose.TRANSPOSE) if geometry.transposed else rgb
    resized = landscape.resize((geometry.width, geometry.height), Image.BILINEAR)
    canvas = Image.new("RGB", (geometry.width, geometry.padded_height), (WHITE, WHITE, WHITE))
    canvas.paste(resized, (0, geometry.padding_before))
    if geometry.transposed:
        canvas = canvas.transpose(Image.Transpose.TRANSPOSE)
    return np.array(canvas)


def global_view(canvas: np.ndarray, image_mean: tuple[float, ...], image_std: tuple[float, ...]) -> np.ndarray:
    """(3, 336, 336) float32: the normalised canvas (H, W, 3 uint8) resized bicubically to 336x336.

    The original resizes the normalised float canvas. Canvas sides are multiples of 336, so every
    output pixel reads fixed taps with fixed rational weights that sum to 1: resizing commutes with
    the per-channel affine normalisation. So the uint8 canvas is resized exactly in integers and only
    the 336x336 result is normalised, the weights' denominators folded into the scale; this differs
    from the original's float32 resize by rounding only (< 1e-6 on the golden images)."""
    out = np.empty((3, CROP, CROP), np.float32)
    for channel, (mean, std) in enumerate(zip(image_mean, image_std, strict=True)):
        plane = canvas[:, :, channel].astype(np.int32)  # (H, W)
        columns, divisor = _integer_downscale(plane.T)  # (336, H): each row of the canvas, downscaled
        rows = columns.T[_bicubic_taps(plane.shape[0])]  # (336, 4, 336): the taps along each column
        # x / 255 then (x - mean) / std, x being the sums still to be divided by their divisor: in
        # float32, in this order (image_kernels computes the same values with packed lanes).
        scale, shift = 1 / (divisor * 255 * std), np.float32(-mean / std)
        if plane.shape[0] // CROP % 2:  # odd factor: the middle tap, weight 1
            out[channel] = rows[:, 2].astype(np.float32) * np.float32(scale) + shift
        else:  # 19 * inner - 3 * outer needs 19 bits: weighted in float32, where it is still exact
            scale /= _EVEN_DENOMINATOR
            inner = (rows[:, 1] + rows[:, 2]).astype(np.float32) * np.float32(_EVEN_WEIGHTS[1] * scale)
            outer = (rows[:, 0] + rows[:, 3]).astype(np.float32) * np.float32(_EVEN_WEIGHTS[0] * scale)
            out[channel] = inner + outer + shift
    return out


def _integer_downscale(values: np.ndarray) -> tuple[np.ndarray, int]:
    """Bicubic downscale of `values` (336 * factor, ...) integers along the first axis to 336, exactly:
    (weighted sums (336, ...), their divisor)."""
    taps = values[_bicubic_taps(values.shape[0])]  # (336, 4, ...)
    if values.shape[0] // CROP % 2:  # odd factor: the middle tap, weight 1
        return taps[:, 2], 1
    weighted = sum(weight * taps[:, k] for k, weight in enumerate(_EVEN_WEIGHTS))
    return weighted, _EVEN_DENOMINATOR


def _bicubic_taps(size: int) -> np.ndarray:
    """(336, 4) source indices of the bicubic taps of each output position, for a downscale of
    `size` = 336 * factor to 336, clamped to [0, size - 1] as torch clamps them."""
    factor = size // CROP
    first = np.arange(CROP) * factor + factor // 2 - 2
    return np.clip(first[:, None] + np.arange(4), 0, size - 1)


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
