"""Batching products for Phi-3-V: each image processed once, prompts padded per use.

An item has one or more photos; its question gets one `<|image_k|>` per photo (`task.prompt(n)`),
so a batch may mix items of different photo counts: `pixel_values` holds every photo of the batch,
row by row in tag order (the model's image slots read them in that order, phi3v.modeling.modeling).

Modes:
  train     right-padded prompt + answer with labels on the answer and its `<|end|>`
  generate  left-padded prompts only (for `model.generate`)
  eval      both of the above (text only, under "loss" and "generate") beside one `pixel_values`
            tensor held once, so pinning and the copy to the device happen once; the model inputs
            of each use: `eval_inputs(batch, "loss")`, `eval_inputs(batch, "generate")`
Every batch carries `meta` (ids, true fields, targets, skipped-image count); pass only the model keys
to the model: `model(**model_inputs(batch))` (the batch contract: phi3v.modeling.batch).

A batch always keeps every sample it was given, so all ranks of a distributed run run the same
graph: a sample with an unreadable photo gets a white placeholder for each photo, and it and the padding
repeats of a distributed sampler get no labels (`meta["supervised"]` False): they add nothing to
the loss, and evaluation leaves them out of its records.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal, TypedDict

import torch
from PIL import Image

from phi3v.modeling import IGNORE_INDEX, Phi3VProcessor
from phi3v.modeling.batch import CollatedBatch, Phi3VBatch
from phi3v.task import FieldValue, TaskSpec

from .dataset import Sample

# Stands in for an unreadable photo: one CLIP crop (the cheapest photo the model accepts), white.
PLACEHOLDER = Image.new("RGB", (336, 336), "white")


class BatchMeta(TypedDict):
    index: list[int]  # dataset index of each row
    supervised: list[bool]  # False: unreadable image or distributed padding (no labels, no record)
    product_id: list[str]
    truth: list[Mapping[str, FieldValue]]  # the true value of each of the task's fields, keyed by name (Sample.truth)
    target: list[str]  # the answer the model should generate
    image_paths: list[tuple[str, ...]]  # each row's photos, in the order its question shows them
    skipped_images: int  # samples of this batch with an unreadable photo (not padding repeats)


class Phi3VCollator:
    """collate_fn for `Sample`s."""

    def __init__(
        self,
        processor: Phi3VProcessor,
        task: TaskSpec,
        mode: Literal["train", "generate", "eval"] = "train",
    ):
        if mode not in ("train", "generate", "eval"):
            raise ValueError(f"mode must be train, generate or eval, got {mode!r}")
        self.processor = processor
        self.task = task
        self.mode = mode
        self._prompts: dict[int, str] = {}  # photo count -> prompt

    def prompt(self, photos: int) -> str:
        """The prompt of an item with `photos` photos (built once per count)."""
        if photos not in self._prompts:
            self._prompts[photos] = self.task.prompt(photos)
        return self._prompts[photos]

    def __call__(self, samples: list[Sample]) -> CollatedBatch:
        if not samples:
            raise ValueError("empty batch: the sampler yielded no indices")
        photos = [s.images if s.images is not None else (PLACEHOLDER,) * len(s.image_paths) for s in samples]
        vision = self.processor.image_processor([image for row in photos for image in row])
        tokens = iter(vision["num_img_tokens"])
        counts = [[next(tokens) for _ in row] for row in photos]  # image tokens of each row's photos
        prompts = [self.prompt(len(row)) for row in photos]
        targets = [self.task.answer_for(s.truth) for s in samples]
        supervised = [s.images is not None and not s.padding for s in samples]
        pixels = {"pixel_values": vision["pixel_values"], "image_sizes": vision["image_sizes"]}
        meta: BatchMeta = {
            "index": [s.index for s in samples],
            "supervised": supervised,
            "product_id": [s.product_id for s in samples],
            "truth": [s.truth for s in samples],
            "target": targets,
            "image_paths": [s.image_paths for s in samples],
            "skipped_images": sum(s.images is None and not s.padding for s in samples),
        }
        if self.mode == "train":
            return {**self._labelled(prompts, counts, targets, supervised), **pixels, "meta": meta}
        generate = self.processor.tokenize(prompts, counts, None, "left")
        if self.mode == "generate":
            return {**generate, **pixels, "meta": meta}
        loss = self._labelled(prompts, counts, targets, supervised)
        return {"loss": loss, "generate": generate, **pixels, "meta": meta}

    def _labelled(
        self, prompts: list[str], counts: list[list[int]], targets: list[str], supervised: list[bool]
    ) -> Phi3VBatch:
        encoded = self.processor.tokenize(prompts, counts, targets, "right")
        encoded["labels"][~torch.tensor(supervised)] = IGNORE_INDEX
        return encoded
