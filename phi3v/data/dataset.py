"""The prepared catalogue as a torch Dataset: rows from the manifest, images opened lazily.

The manifest stays an Arrow table (compact columnar strings and numbers) and each image is opened
only when its sample is requested, so memory stays flat as the catalogue grows. An item has one or
more photos (the `image_*` list columns, in the order the question shows them).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import torch
from PIL import Image

from phi3v.task import FieldValue, TaskSpec

from .images import ImageRejected, load_product_image
from .sampler import PaddingIndex

log = logging.getLogger(__name__)

# The manifest's own columns; beside them, one column per field of the task, named as the field (its true
# values, typed: `FIELD_TYPES`), so the seed task's manifest holds title, category and price.
MANIFEST_COLUMNS = {
    "product_id": pa.string(),
    "image_paths": pa.list_(pa.string()),  # the item's photos, relative to the data dir (absolute: kept in place)
    "image_widths": pa.list_(pa.int32()),  # of each photo, after EXIF orientation: what the processor will see
    "image_heights": pa.list_(pa.int32()),
    "image_urls": pa.list_(pa.string()),  # each photo as the table wrote it
    "source_row": pa.int64(),
}
FIELD_TYPES = {"number": pa.float64(), "integer": pa.int64(), "category": pa.string(), "text": pa.string()}


def manifest_schema(task: TaskSpec) -> pa.Schema:
    """The manifest's columns for `task`: its own, then each field's; ValueError naming the key when a field
    is named like one of the manifest's own columns."""
    clashes = [f"data.task.fields[{index}].name {spec.name!r} is a column the manifest keeps for itself "
               f"({', '.join(MANIFEST_COLUMNS)}): rename the field" for index, spec in enumerate(task.fields)
               if spec.name in MANIFEST_COLUMNS]
    if clashes:
        raise ValueError("\n".join(clashes))
    return pa.schema([*MANIFEST_COLUMNS.items(), *((spec.name, FIELD_TYPES[spec.type]) for spec in task.fields)])


@dataclass(frozen=True)
class Sample:
    """One item with its photos and the true values of the task's fields (`truth`, keyed by field name, as
    evaluation and prediction rows carry them); `images` is None when one of them could not be read (skipped).
    `padding`: a repeat that only fills a distributed batch (see sampler.PaddingIndex)."""

    index: int
    product_id: str
    truth: Mapping[str, FieldValue]
    image_paths: tuple[str, ...]
    images: tuple[Image.Image, ...] | None
    error: str | None = None
    padding: bool = False


def read_manifest(path: str | Path, task: TaskSpec) -> pa.Table:
    """The manifest at `path`, checked to hold the columns `task` needs (its fields' among them)."""
    table = pq.read_table(path)
    missing = [name for name in manifest_schema(task).names if name not in table.column_names]
    if missing:
        raise ValueError(f"{path} lacks columns {missing}; re-run `python -m phi3v.prepare` for this data")
    return table


class ProductDataset(torch.utils.data.Dataset):
    """Rows of a manifest table (already split/limited) with images loaded on access.

    Args:
        table: manifest rows (see `manifest_schema`).
        data_dir: the directory relative image paths start from.
        task: whose fields' columns hold each row's true values (`Sample.truth`).
        strict: raise on an unreadable image (naming the file) instead of skipping it.
        max_pixels: decompression-bomb guard for images changed on disk after prepare.
    """

    def __init__(self, table: pa.Table, data_dir: str | Path, task: TaskSpec, strict: bool = False,
                 max_pixels: int = 64_000_000):
        self.table = table
        self.data_dir = Path(data_dir)
        self.fields = task.names
        self.strict = strict
        self.max_pixels = max_pixels
        self._columns = {name: table.column(name) for name in (*MANIFEST_COLUMNS, *self.fields)}

    def __len__(self) -> int:
        return self.table.num_rows

    def value(self, column: str, index: int):
        return self._columns[column][index].as_py()

    def truth(self) -> list[dict[str, FieldValue]]:
        """The true values of every row (its fields keyed by name), in row order."""
        columns = [self._columns[name].to_pylist() for name in self.fields]
        return [dict(zip(self.fields, values)) for values in zip(*columns)] if columns else []

    def row_truth(self, index: int) -> dict[str, FieldValue]:
        """The true values of one row, keyed by field name."""
        return {name: self.value(name, index) for name in self.fields}

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
            truth=self.row_truth(index),
            image_paths=tuple(map(str, paths)),
            images=None if error else tuple(images),
            error=error,
            padding=isinstance(index, PaddingIndex),
        )
