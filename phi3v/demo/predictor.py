"""One product's photo (or photos) in, one parsed answer out (the task's fields, keyed by name): the model
behind the web demo.

The only module of the demo that touches inference code (phi3v.inference: export loading, greedy
decoding; phi3v.task: parsing).

A request goes through three steps, which the server schedules (phi3v/demo/admission.py):
`pixels` reads the image headers (cheap: what decoding will cost), `prepare` decodes the photos and
builds the model inputs (memory ~ the pixel count; may run in several threads at once), `generate`
runs the model (one at a time: serialising costs throughput on a GPU that could batch, but it keeps
peak memory that of one generation and every answer exactly what `phi3v.predict image=...` prints for
the same photos: greedy decoding, no padding). `answer` chains the three, for scripts and tests.

A request holds one product's photos, in order: one (the raw body) or several (a form's files), asked
with one `<|image_k|>` each (the export's question, `task.prompt(n)`). `max_pixels` bounds them
together, so a request never holds more of the decoding budget than one photo of that size.
"""

from __future__ import annotations

import logging
import os
import re
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass

from phi3v.data.images import ImageRejected, decode_product_image, image_size
from phi3v.inference import greedy_answers, load_for_inference, load_untrained, pick_device
from phi3v.task import FieldValue, TaskSpec

log = logging.getLogger(__name__)
FORMATS = "JPEG, PNG, WebP or GIF"  # what to suggest (phi3v.data.images.ACCEPTED_FORMATS accepts more)


class BadUpload(Exception):
    """An upload the model cannot read; the message is meant for the person who sent it."""


@dataclass(frozen=True)
class Answer:
    """The generated text, its parsed fields (the task's, in order, keyed by name; None where unreadable), and
    where the time went (seconds)."""

    text: str
    fields: dict[str, FieldValue]
    latency_s: float  # decoding the photo, preprocessing and generation
    queued_s: float  # waiting for other users' photos (decoding budget, generations before this one)


def as_photos(data: bytes | Sequence[bytes]) -> list[bytes]:
    """One encoded photo or a product's photos, as a list."""
    return [data] if isinstance(data, (bytes, bytearray)) else list(data)


class Predictor:
    """A frozen model, its processor and the task it was trained with.

    Args:
        model: a Phi3VForCausalLM or PeftModel in eval mode.
        processor: the export's Phi3VProcessor.
        task: the TaskSpec the model was trained with (the question asked, the fields read from the answer).
        source: what the model is, shown on the page ("adapter outputs/.../adapter", "preset tiny").
        max_new_tokens: answer budget.
        max_pixels: uploads with more pixels (one request's photos together) are refused before decoding
            (decompression bombs).
    """

    def __init__(self, model, processor, task: TaskSpec, source: str, max_new_tokens: int = 64,
                 max_pixels: int = 40_000_000):
        self.model = model
        self.processor = processor
        self.task = task
        self.source = source
        self.max_new_tokens = max_new_tokens
        self.max_pixels = max_pixels
        self._lock = threading.Lock()  # `answer` only: the server serialises `generate` itself

    def pixels(self, data: bytes | Sequence[bytes]) -> int:
        """width * height of the photo(s), summed, from their headers (nothing decoded). Raises BadUpload."""
        photos = as_photos(data)
        total = 0
        for index, photo in enumerate(photos):
            try:
                width, height = image_size(photo, self.max_pixels)
            except ImageRejected as rejected:
                raise BadUpload(which(index, len(photos)) + upload_message(rejected, self.max_pixels)) from rejected
            total += width * height
        if total > self.max_pixels:
            raise BadUpload(f"These {len(photos)} photos are too large to read together: {total / 1e6:.1f} megapixels; "
                            f"the limit is {self.max_pixels / 1e6:g} megapixels for one product's photos. Resize "
                            "them (a few megapixels each are plenty) and send them again.")
        return total

    def prepare(self, data: bytes | Sequence[bytes]) -> dict:
        """The model inputs for one product's encoded photo(s) (decoded, EXIF-rotated, preprocessed), asked
        with one <|image_k|> each. Raises BadUpload."""
        photos, images = as_photos(data), []
        for index, photo in enumerate(photos):
            try:
                images.append(decode_product_image(photo, self.max_pixels))
            except ImageRejected as rejected:
                raise BadUpload(which(index, len(photos)) + upload_message(rejected, self.max_pixels)) from rejected
        return self.processor(self.task.prompt(len(images)), images, padding_side="left")

    def generate(self, inputs: dict) -> str:
        """The model's answer text. Not thread-safe: one call at a time."""
        return greedy_answers(self.model, self.processor, inputs, self.max_new_tokens)[0]

    def parsed(self, text: str, latency_s: float, queued_s: float) -> Answer:
        return Answer(text, self.task.parse(text), round(latency_s, 3), round(queued_s, 3))

    def answer(self, data: bytes | Sequence[bytes]) -> Answer:
        """The model's answer for one product's encoded photo(s), in the calling thread. Raises BadUpload."""
        start = time.perf_counter()
        self.pixels(data)
        inputs = self.prepare(data)
        waiting = time.perf_counter()
        with self._lock:
            queued = time.perf_counter() - waiting
            text = self.generate(inputs)
        return self.parsed(text, time.perf_counter() - start - queued, queued)


def which(index: int, count: int) -> str:
    """"Photo 2 of 3: " before what is wrong with one of several photos (nothing for a single photo)."""
    return f"Photo {index + 1} of {count}: " if count > 1 else ""


def upload_message(rejected: ImageRejected, max_pixels: int) -> str:
    """One sentence for the uploader: what is wrong with the file, which limit, what to send instead."""
    reason, detail = rejected.reason, rejected.detail
    if reason == "empty":
        return "The file is empty (0 bytes). Choose a photo."
    if reason == "not_an_image":
        return f"This file is not a photo (it is text, a web page or another kind of file). Send a {FORMATS} photo."
    if reason == "unsupported_format":  # detail: "<name> is not accepted", the name as users know it
        name = detail.removesuffix(" is not accepted")
        return f"This is a {name} file, which the demo cannot read. Convert it to {FORMATS} and send it again."
    if reason == "too_many_pixels":
        return pixels_message(detail, max_pixels)
    if reason == "zero_size":
        return "This image says it is 0 pixels wide or high: there is nothing to look at. Send another photo."
    if reason == "unconvertible":
        return f"This image's colours cannot be read as an ordinary photo. Save it as {FORMATS} and send it again."
    return "This image file is damaged or cut off: its pixels cannot be decoded. Send the complete photo again."


def pixels_message(detail: str, max_pixels: int) -> str:
    """Both our check and Pillow's own bomb guard write the pixel count as "<n> pixels" in the detail
    ("4000x3000 = 12000000 pixels > ...", "Image size (180000000 pixels) exceeds limit of ...")."""
    found = re.search(r"(\d+) pixels", detail)
    size = f"{int(found.group(1)) / 1e6:.1f} megapixels" if found else "more pixels than that"
    return (f"This image is too large to read: {size}; the limit is {max_pixels / 1e6:g} megapixels. "
            "Resize it (a few megapixels are plenty) and send it again.")


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
        model, processor, task = load_for_inference(export, dtype=dtype)
        source = str(export)
    else:
        model, processor, task = load_untrained(preset, dtype)
        source = f"preset {preset} (random weights, untrained)"
    model.to(pick_device(device))
    return Predictor(model, processor, task, source, max_new_tokens, max_pixels)
