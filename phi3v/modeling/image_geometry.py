"""Sizes of Phi-3-Vision's HD transform: pure arithmetic, no pixels touched.

An image is resized, keeping its aspect ratio, to a grid of at most `num_crops` 336x336 crops and
padded top/bottom with white to whole crops (portrait images are handled transposed). The reference
transform (image_processing.py) and its accelerated version (image_kernels.py) share these sizes.
"""

from __future__ import annotations

import math
from typing import NamedTuple

CROP = 336  # CLIP ViT-L/14-336 input side; the HD grid is made of CROP x CROP tiles
WHITE = 255  # padding value of the uint8 canvas


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

    @property
    def padding_before(self) -> int:
        """White lines above the resized image (left of it when transposed): the floor of half the
        padding, so an odd padding puts the extra line after the image."""
        return (self.padded_height - self.height) // 2


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
