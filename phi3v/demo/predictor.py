"""One photo in, one parsed answer out: the model behind the web demo.

The only module of the demo that touches inference code (phi3v.inference: export loading, greedy
decoding; phi3v.task: parsing).

One `Predictor` serves every request of the process: the photo is decoded and preprocessed in the
request's thread, then generation runs under a lock, one at a time. Serialising costs throughput on
a GPU that could batch, but it keeps peak memory that of one request and every answer exactly what
`phi3v.predict image=...` prints for the same photo (greedy decoding, no padding).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass

from phi3v.data.images import REASONS, ImageRejected, decode_product_image
from phi3v.inference import greedy_answers, load_for_inference, load_untrained, pick_device
from phi3v.task import PromptTemplate

log = logging.getLogger(__name__)


class BadUpload(Exception):
    """An upload the model cannot read; the message is meant for the person who sent it."""


@dataclass(frozen=True)
class Answer:
    """The generated text, its parsed fields, and where the time went (seconds)."""

    text: str
    title: str | None
    category: str | None
    price: float | None
    latency_s: float  # decoding the photo, preprocessing and generation
    queued_s: float  # waiting for other users' generations to finish


class Predictor:
    """A frozen model, its processor and the question it was trained with.

    Args:
        model: a Phi3VForCausalLM or PeftModel in eval mode.
        processor: the export's Phi3VProcessor.
        template: the PromptTemplate the model was trained with (the question asked, the answer parsed).
        source: what the model is, shown on the page ("adapter outputs/.../adapter", "preset tiny").
        max_new_tokens: answer budget.
        max_pixels: uploads with more pixels are refused before decoding (decompression bombs).
    """

    def __init__(self, model, processor, template: PromptTemplate, source: str, max_new_tokens: int = 64,
                 max_pixels: int = 40_000_000):
        self.model = model
        self.processor = processor
        self.template = template
        self.source = source
        self.max_new_tokens = max_new_tokens
        self.max_pixels = max_pixels
        self._lock = threading.Lock()

    def answer(self, data: bytes) -> Answer:
        """The model's answer for an encoded photo. Raises BadUpload when the bytes are not a usable image."""
        start = time.perf_counter()
        try:
            image = decode_product_image(data, self.max_pixels)
        except ImageRejected as rejected:
            raise BadUpload(upload_message(rejected)) from rejected
        inputs = self.processor(self.template.prompt(), [image], padding_side="left")
        waiting = time.perf_counter()
        with self._lock:
            queued = time.perf_counter() - waiting
            text = greedy_answers(self.model, self.processor, inputs, self.max_new_tokens)[0]
        parsed = self.template.parse(text)
        latency = time.perf_counter() - start - queued
        return Answer(text, parsed.title, parsed.category, parsed.price, round(latency, 3), round(queued, 3))


def upload_message(rejected: ImageRejected) -> str:
    """One sentence for the uploader: what is wrong and what to send instead."""
    if rejected.reason == "too_many_pixels":
        return f"This image has too many pixels to decode safely ({rejected.detail}). Send a smaller photo."
    if rejected.reason == "empty":
        return "The file is empty (0 bytes). Choose a photo."
    meaning = REASONS.get(rejected.reason, rejected.reason)
    return f"This file cannot be used as a photo: {meaning} ({rejected.detail}). Send a JPEG, PNG, WebP or GIF."


def load_predictor(
    export: str | os.PathLike | None = None,
    preset: str | None = None,
    dtype: str | None = None,
    device: str = "auto",
    max_new_tokens: int = 64,
    max_pixels: int = 40_000_000,
) -> Predictor:
    """A Predictor for a phi3v export (adapter, full or merged) or, with `preset`, untrained random weights."""
    if (export is None) == (preset is None):
        raise ValueError("load_predictor needs exactly one of export or preset")
    if export is not None:
        model, processor, template = load_for_inference(export, dtype=dtype)
        source = str(export)
    else:
        model, processor, template = load_untrained(preset, dtype)
        source = f"preset {preset} (random weights, untrained)"
    model.to(pick_device(device))
    return Predictor(model, processor, template, source, max_new_tokens, max_pixels)
