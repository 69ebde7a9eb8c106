"""The image tokens of an item's photos: the cap on them (`PhotoSpec.max_image_tokens`), and the check that
the question's image tags fit every item's photo count.

A photo costs its image tokens (num_crops and its aspect ratio decide how many; phi3v.modeling.image_geometry),
known only once the processor is (`ProductDataModule.connect`), so the cap is applied when the data is set
up, not when it is prepared, and the same way to every split and to a run's products read back by predict:
an item keeps its leading photos that fit the cap together (`PhotoSpec.within_budget`); an item whose first
photo alone exceeds it is left out. Both are counted and logged.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc

from phi3v.task import PhotoSpec
from phi3v.task.photos import IMAGE_TAG

log = logging.getLogger(__name__)
PHOTO_COLUMNS = ("image_paths", "image_widths", "image_heights", "image_urls")  # one entry per photo


@dataclass(frozen=True)
class CapCounts:
    items_left_out: int = 0  # the first photo alone exceeds the cap
    photos_left_out: int = 0  # photos past the cap of items kept


def cap_image_tokens(
    table: pa.Table, photos: PhotoSpec, tokens_of: Callable[[int, int], int]
) -> tuple[pa.Table, CapCounts]:
    """`table` (manifest rows) with each item's photos cut to those within `photos.max_image_tokens`, and
    the items without any left out; `tokens_of(width, height)` is a photo's image-token count."""
    if photos.max_image_tokens is None:
        return table, CapCounts()
    widths, heights = table.column("image_widths").to_pylist(), table.column("image_heights").to_pylist()
    keep = [photos.within_budget([tokens_of(w, h) for w, h in zip(ws, hs)]) for ws, hs in zip(widths, heights)]
    counts = CapCounts(items_left_out=keep.count(0),
                       photos_left_out=sum(len(ws) - k for ws, k in zip(widths, keep) if k))
    if counts == CapCounts():
        return table, counts
    for name in PHOTO_COLUMNS:
        cut = [values[:k] for values, k in zip(table.column(name).to_pylist(), keep)]
        table = table.set_column(table.schema.get_field_index(name), table.schema.field(name),
                                 pa.array(cut, table.schema.field(name).type))
    table = table.filter(pa.array([k > 0 for k in keep]))
    log.warning("data.photos.max_image_tokens=%d: %d items left out (their first photo alone exceeds it), "
                "%d photos left out of the items kept", photos.max_image_tokens, counts.items_left_out,
                counts.photos_left_out)
    return table, counts


def check_question_fits(question: str, table: pa.Table, key: str) -> None:
    """A question with one tag per photo (`<|image_1|>..<|image_n|>`, n > 1) serves items of exactly n
    photos: fail early, naming `key`, when some item has another count (the single tag `<|image_1|>`
    serves any count)."""
    tags = len(IMAGE_TAG.findall(question))
    if tags < 2 or table.num_rows == 0:
        return
    counts = pc.list_value_length(table.column("image_paths")).to_pylist()
    other = sorted({count for count in counts if count != tags})
    if other:
        raise ValueError(
            f"{key} has {tags} image tags but {sum(count != tags for count in counts)} items have "
            f"{' or '.join(map(str, other))} photos: write the question with the single tag <|image_1|> (it stands "
            "for all of an item's photos), or keep only items with that many photos"
        )
