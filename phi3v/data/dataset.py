"""The prepared catalogue as a torch Dataset: rows from the manifest, images opened lazily.

The manifest stays an Arrow table (compact columnar strings and numbers) and each image is opened
only when its sample is requested, so memory stays flat as the catalogue grows. An item has one or
more photos (the `image_*` list columns, in the order the question shows them).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import torch
from PIL import Image

from .images import ImageRejected, load_product_image
from .sampler import PaddingIndex

log = logging.getLogger(__name__)

# The fields of the answer, keyed by these names wherever they travel together (Sample.truth, the batch
# meta, evaluation records, baselines).
TRUTH_FIELDS = ("title", "category", "price")
MANIFEST_COLUMNS = {
    "product_id": pa.string(),
    "title": pa.string(),
    "category": pa.string(),
    "price": pa.float64(),
    "image_paths": pa.list_(pa.string()),  # the item's photos, relative to the data dir (absolute: kept in place)
    "image_widths": pa.list_(pa.int32()),  # of each photo, after EXIF orientation: what the processor will see
    "image_heights": pa.list_(pa.int32()),
    "image_urls": pa.list_(pa.string()),  # each photo as the table wrote it
    "source_row": pa.int64(),
}


@dataclass(frozen=True)
class Sample:
    """One product with its photos; `images` is None when one of them could not be read (skipped).
    `padding`: a repeat that only fills a distributed batch (see sampler.PaddingIndex)."""

    index: int
    product_id: str
    title: str
    category: str
    price: float
    image_paths: tuple[str, ...]
    images: tuple[Image.Image, ...] | None
    error: str | None = None
    padding: bool = False

    @property
    def truth(self) -> dict[str, Any]:
        """The answer's fields keyed by name, as evaluation and prediction rows carry them."""
        return {name: getattr(self, name) for name in TRUTH_FIELDS}


def read_manifest(path: str | Path) -> pa.Table:
    table = pq.read_table(path)
    missing = sorted(set(MANIFEST_COLUMNS) - set(table.column_names))
    if missing:
        raise ValueError(f"{path} lacks columns {missing}; re-run `python -m phi3v.prepare` for this data")
    return table


class ProductDataset(torch.utils.data.Dataset):
    """Rows of a manifest table (already split/limited) with images loaded on access.

    Args:
        table: manifest rows (see MANIFEST_COLUMNS).
        data_dir: the directory relative image paths start from.
        strict: raise on an unreadable image (naming the file) instead of skipping it.
        max_pixels: decompression-bomb guard for images changed on disk after prepare.
    """

    def __init__(self, table: pa.Table, data_dir: str | Path, strict: bool = False, max_pixels: int = 64_000_000):
        self.table = table
        self.data_dir = Path(data_dir)
        self.strict = strict
        self.max_pixels = max_pixels
        self._columns = {name: table.column(name) for name in MANIFEST_COLUMNS}

    def __len__(self) -> int:
        return self.table.num_rows

    def value(self, column: str, index: int):
        return self._columns[column][index].as_py()

    def truth(self) -> dict[str, list]:
        """The answer's fields of every row, as columns keyed by name (`TRUTH_FIELDS`), in row order."""
        return {name: self._columns[name].to_pylist() for name in TRUTH_FIELDS}

    def image_files(self, index: int) -> tuple[Path, ...]:
        """The item's photos, in order (an absolute path stays absolute)."""
        return tuple(self.data_dir / path for path in self.value("image_paths", index))

    def __getitem__(self, index: int) -> Sample:
        paths = self.image_files(index)
        images, error = [], None
        for path in paths:
            try:
                images.append(load_product_image(path, max_pixels=self.max_pixels))
            except ImageRejected as problem:
                if self.strict:
                    raise ValueError(
                        f"unreadable image {path} ({problem.reason}: {problem.detail}); fix or remove the file, "
                        "re-run prepare, or set data.strict_images=false to skip such samples"
                    ) from problem
                log.warning("skipping sample %d: image %s is unreadable (%s)", index, path, problem.reason)
                error = problem.reason
                break
        return Sample(
            index=int(index),
            product_id=self.value("product_id", index),
            title=self.value("title", index),
            category=self.value("category", index),
            price=self.value("price", index),
            image_paths=tuple(map(str, paths)),
            images=None if error else tuple(images),
            error=error,
            padding=isinstance(index, PaddingIndex),
        )
