"""What `Phi3VForCausalLM.forward` takes: the batch contract between whoever builds batches (the data
collator, the processor, predict) and the model.

`Phi3VBatch` is the model's keys; `CollatedBatch` is what a collator returns: those keys plus the
builder's own `meta`, or for evaluation the text twice, right-padded with labels under "loss" and
left-padded for generation under "generate", beside one `pixel_values` tensor used by both (pinned and
copied to the device once). `model(**model_inputs(batch))` passes exactly the model's keys, and
`eval_inputs(batch, use)` gives the model inputs of one use.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal, TypedDict

import torch

MODEL_KEYS = ("input_ids", "attention_mask", "pixel_values", "image_sizes", "labels")
PIXEL_KEYS = ("pixel_values", "image_sizes")


class Phi3VBatch(TypedDict, total=False):
    input_ids: torch.Tensor  # (batch, length) int64; image k of a row holds -k
    attention_mask: torch.Tensor  # (batch, length) 1 = token, 0 = padding
    pixel_values: torch.Tensor  # (images, num_crops + 1, 3, 336, 336) float32
    image_sizes: torch.Tensor  # (images, 2) canvas (height, width)
    labels: torch.Tensor  # (batch, length) -100 except answer tokens and <|end|>


class CollatedBatch(Phi3VBatch, total=False):
    """A collated batch (phi3v.data.collate.Phi3VCollator): a train or generate batch holds the model's
    keys; an eval batch the text of each use under `loss` and `generate` beside `pixel_values` and
    `image_sizes`. `meta` is the builder's (phi3v.data.collate.BatchMeta) and never reaches the model."""

    loss: Phi3VBatch  # input_ids, attention_mask, labels: right-padded prompt + answer
    generate: Phi3VBatch  # input_ids, attention_mask: left-padded prompts
    meta: Mapping[str, Any]


def model_inputs(batch: CollatedBatch) -> Phi3VBatch:
    """The keys `Phi3VForCausalLM.forward` takes."""
    return {key: batch[key] for key in MODEL_KEYS if key in batch}


def eval_inputs(batch: CollatedBatch, use: Literal["loss", "generate"]) -> Phi3VBatch:
    """The model inputs of an eval batch for the teacher-forced loss (right-padded, with labels) or
    for generation (left-padded prompts): the text of `use` with the batch's one pixel tensor."""
    return model_inputs({**batch[use], **{key: batch[key] for key in PIXEL_KEYS}})
