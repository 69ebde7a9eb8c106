"""The HD image embedding of Phi-3-Vision: CLIP tower -> 2x2 merge -> separators -> MLP projection.

Per image with an HD canvas of h x w crops (336 px each), the tokens are, in order:
  local crops as one (12h) x (12w) grid, a `sub_GN` separator after every grid row  -> 12h * (12w + 1)
  one `glb_GN` token                                                                 -> 1
  the global 336 px view as a 12 x 12 grid, again with a `sub_GN` after each row      -> 12 * 13
which is `(h*w + 1) * 144 + 1 + (h + 1) * 12` tokens, the count the processor reserves.

Only the 1 + h*w real crops of an image go through CLIP; the processor's zero-padding crops
(up to num_crops + 1 per image) are never encoded.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import CLIPVisionModel

from .configuration import Phi3VConfig


class CLIPTower(nn.Module):
    """Holds the CLIP vision model under the attribute name of the released checkpoints.

    The checkpoints store `img_processor.vision_model.*`; transformers 5's `CLIPVisionModel` has no
    `vision_model` child, so this container supplies that level and the key names match as is.
    """

    def __init__(self, config: Phi3VConfig):
        super().__init__()
        self.vision_model = CLIPVisionModel._from_config(config.vision_config)

    def forward(self, crops: torch.Tensor) -> torch.Tensor:
        """Patch features of the second-to-last layer without CLS: (n, 3, S, S) -> (n, P, C)."""
        clip = self.vision_model
        hidden = clip.pre_layrnorm(clip.embeddings(crops))
        # Features come from hidden_states[-2], i.e. after all but the last encoder layer; the
        # last layer and post_layernorm are stored in the checkpoint but never influence them.
        for layer in clip.encoder.layers[:-1]:
            hidden = layer(hidden, None)
        return hidden[:, 1:]


class Phi3VImageEmbedding(nn.Module):
    """Turns `pixel_values` + `image_sizes` into the projected image tokens of every image."""

    def __init__(self, config: Phi3VConfig):
        super().__init__()
        vision = config.vision_config
        self.image_size = vision.image_size  # 336
        self.grid = vision.image_size // vision.patch_size  # 24 patches per side
        self.merged = self.grid // 2  # 12 tokens per side after the 2x2 merge
        width = vision.hidden_size  # C (1024 for ViT-L)
        hidden = config.hidden_size

        self.img_processor = CLIPTower(config)
        # Learnable separators, (1, 1, 4C) and (1, 1, 1, 4C) as stored in the checkpoints.
        self.glb_GN = nn.Parameter(torch.zeros(1, 1, 4 * width))
        self.sub_GN = nn.Parameter(torch.zeros(1, 1, 1, 4 * width))
        self.img_projection = nn.Sequential(
            nn.Linear(4 * width, hidden), nn.GELU(), nn.Linear(hidden, hidden)
        )

    def crop_grid(self, image_sizes: torch.Tensor) -> list[tuple[int, int]]:
        """(rows, cols) of local crops per image from the canvas (height, width) in pixels."""
        sizes = image_sizes.tolist()
        return [(int(h) // self.image_size, int(w) // self.image_size) for h, w in sizes]

    def forward(self, pixel_values: torch.Tensor, image_sizes: torch.Tensor) -> list[torch.Tensor]:
        """Projected tokens of each image, a list of (num_tokens_i, hidden) tensors.

        Args:
            pixel_values: (n_images, max_crops, 3, 336, 336), crop 0 global, then row-major local
                crops, then zero padding.
            image_sizes: (n_images, 2) canvas (height, width), multiples of 336.
        """
        grids = self.crop_grid(image_sizes)
        self._check_inputs(pixel_values, grids)
        # Encode only the real crops of every image, all images in one CLIP batch: a view of pixel_values
        # when every crop is real (one canvas size, e.g. num_crops 1), else a copy of the real ones.
        real = [1 + h * w for h, w in grids]
        if all(n == pixel_values.shape[1] for n in real):
            crops = pixel_values.flatten(0, 1)  # (n_images * crops, 3, S, S)
        else:
            crops = torch.cat([pixel_values[i, :n] for i, n in enumerate(real)])
        dtype = self.glb_GN.dtype  # the embedding's dtype (the projection may be wrapped by PEFT)
        features = self.img_processor(crops.to(dtype))  # (n_real_crops, 576, C)

        tokens, start = [], 0
        for h, w in grids:
            image_features = features[start : start + 1 + h * w]
            start += 1 + h * w
            tokens.append(self._hd_layout(image_features, h, w))
        lengths = [t.shape[0] for t in tokens]
        projected = self.img_projection(torch.cat(tokens))  # one matmul for all images
        return list(projected.split(lengths))

    def _check_inputs(self, pixel_values: torch.Tensor, grids: list[tuple[int, int]]) -> None:
        if pixel_values.ndim != 5 or pixel_values.shape[0] != len(grids):
            raise ValueError(
                f"pixel_values must be (n_images, crops, 3, {self.image_size}, {self.image_size}) with one "
                f"image_sizes row per image; got pixel_values {tuple(pixel_values.shape)} and "
                f"{len(grids)} image_sizes rows"
            )
        for i, (h, w) in enumerate(grids):
            if h < 1 or w < 1 or 1 + h * w > pixel_values.shape[1]:
                raise ValueError(
                    f"image {i}: image_sizes gives {h}x{w} local crops (+1 global) but pixel_values holds "
                    f"{pixel_values.shape[1]} crops per image"
                )

    def _merge_2x2(self, features: torch.Tensor) -> torch.Tensor:
        """(n, 576, C) patch features -> (n, 12, 12, 4C), each token the 2x2 patch block."""
        n, _, c = features.shape
        m = self.merged
        x = features.reshape(n, m, 2, m, 2, c)  # (n, row, dy, col, dx, C)
        x = x.permute(0, 1, 3, 2, 4, 5)  # (n, row, col, dy, dx, C)
        return x.reshape(n, m, m, 4 * c)

    def _hd_layout(self, features: torch.Tensor, h: int, w: int) -> torch.Tensor:
        """Order one image's crop features as local grid + separators, glb_GN, global view."""
        m = self.merged
        merged = self._merge_2x2(features)  # (1 + h*w, 12, 12, 4C)
        global_view, local = merged[:1], merged[1:]
        local = local.reshape(h, w, m, m, -1).permute(0, 2, 1, 3, 4)  # (h, 12, w, 12, 4C)
        local = local.reshape(h * m, w * m, -1)  # (12h, 12w, 4C)
        local = self._append_row_separator(local)  # (12h, 12w + 1, 4C)
        global_view = self._append_row_separator(global_view[0])  # (12, 13, 4C)
        return torch.cat([local.flatten(0, 1), self.glb_GN[0], global_view.flatten(0, 1)])

    def _append_row_separator(self, grid: torch.Tensor) -> torch.Tensor:
        """Append one `sub_GN` token at the end of every row of a (rows, cols, 4C) grid."""
        separator = self.sub_GN[0].expand(grid.shape[0], 1, -1).to(grid.dtype)  # (rows, 1, 4C)
        return torch.cat([grid, separator], dim=1)
