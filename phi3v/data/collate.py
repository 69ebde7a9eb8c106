"""Batching products for Phi-3-V: each image processed once, prompts padded per use.

Modes:
  train     right-padded prompt + answer with labels on the answer and its `<|end|>`
  generate  left-padded prompts only (for `model.generate`)
  eval      both of the above sharing one `pixel_values` tensor, for val loss + generation
Every batch carries `meta` (ids, targets, prices, skipped-image count); pass only the model keys
to the model: `model(**model_inputs(batch))`.
"""

from __future__ import annotations

from typing import Literal, TypedDict

import torch

from phi3v.modeling import Phi3VProcessor

from .dataset import Sample
from .prompts import PromptTemplate

MODEL_KEYS = ("input_ids", "attention_mask", "pixel_values", "image_sizes", "labels")


class Phi3VBatch(TypedDict, total=False):
    input_ids: torch.Tensor  # (batch, length) int64; image k of a row holds -k
    attention_mask: torch.Tensor  # (batch, length) 1 = token, 0 = padding
    pixel_values: torch.Tensor  # (images, num_crops + 1, 3, 336, 336) float32
    image_sizes: torch.Tensor  # (images, 2) canvas (height, width)
    labels: torch.Tensor  # (batch, length) -100 except answer tokens and <|end|>


class BatchMeta(TypedDict):
    product_id: list[str]
    title: list[str]
    category: list[str]
    price: torch.Tensor  # (batch,) float64
    target: list[str]  # the answer the model should generate
    image_path: list[str]
    skipped_images: int  # samples of this batch dropped because their image was unreadable


def model_inputs(batch: dict) -> Phi3VBatch:
    """The keys `Phi3VForCausalLM.forward` takes."""
    return {key: batch[key] for key in MODEL_KEYS if key in batch}


class Phi3VCollator:
    """collate_fn for `Sample`s. Returns None when every image of the batch was unreadable."""

    def __init__(
        self,
        processor: Phi3VProcessor,
        template: PromptTemplate,
        mode: Literal["train", "generate", "eval"] = "train",
    ):
        if mode not in ("train", "generate", "eval"):
            raise ValueError(f"mode must be train, generate or eval, got {mode!r}")
        self.processor = processor
        self.template = template
        self.mode = mode
        self.prompt = template.prompt()

    def __call__(self, samples: list[Sample]) -> dict | None:
        usable = [s for s in samples if s.image is not None]
        if not usable:
            return None
        vision = self.processor.image_processor([s.image for s in usable])
        prompts = [self.prompt] * len(usable)
        counts = [[n] for n in vision["num_img_tokens"]]
        targets = [self.template.target(s.title, s.category, s.price) for s in usable]
        pixels = {"pixel_values": vision["pixel_values"], "image_sizes": vision["image_sizes"]}
        meta: BatchMeta = {
            "product_id": [s.product_id for s in usable],
            "title": [s.title for s in usable],
            "category": [s.category for s in usable],
            "price": torch.tensor([s.price for s in usable], dtype=torch.float64),
            "target": targets,
            "image_path": [s.image_path for s in usable],
            "skipped_images": len(samples) - len(usable),
        }
        if self.mode == "train":
            return {**self.processor.tokenize(prompts, counts, targets, "right"), **pixels, "meta": meta}
        generate = {**self.processor.tokenize(prompts, counts, None, "left"), **pixels}
        if self.mode == "generate":
            return {**generate, "meta": meta}
        supervised = {**self.processor.tokenize(prompts, counts, targets, "right"), **pixels}
        return {"loss": supervised, "generate": generate, "meta": meta}
