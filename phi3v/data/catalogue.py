"""Catalogue rows: mapping a table's columns to items, and validating every value.

Any image table works once `ColumnMap` names its photo and id columns and the task's fields
(phi3v.task.TaskSpec, `data.task.fields`) name the columns of the values the answer states; each cell is
read by its field's type (phi3v.data.values). A row that cannot be a training example is dropped with a
stable reason key (counted in the prepare report), never silently kept or silently lost:

  bad_<field>    a number or integer field missing, "N.A.", not a number, NaN/inf, zero or negative
                 (`bad_price`), or an integer field not whole
  empty_<field>  a text field missing or blank (`empty_title`)
  missing_image  no image URL/path
  duplicate_id   a product id seen on an earlier row (the first row is kept)

The fields are read in task order, then the photos: a row's reason is its first problem. A category
field's "N.A." (or missing) is kept as "N.A.": the item is still a valid example.

Several photos per item (`ColumnMap.image`, `item_photos`): the image column may be a list of columns
(`[imageurl, detail_imageurl]`, one photo each), and a cell may hold a list of photos (a parquet or
JSONL list, or a JSON array written in a CSV cell: `["a.jpg", "b.jpg"]`); an item's photos are all of
them in column order, each cell's list in its order. An empty or placeholder cell (or list entry) is
no photo; an item with none is `missing_image`. Which photos are used, and what an unreadable one does,
is decided when they are fetched (phi3v.data.photo_files, `PhotoSpec`).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from phi3v.task import FieldValue, TaskSpec

# PLACEHOLDERS and InvalidValue are imported from here too (download.py, tests)
from .values import PLACEHOLDERS, InvalidValue, field_values
from .values import cell_text as _text


@dataclass(frozen=True)
class ColumnMap:
    """Which source columns hold an item's photos and its id (the fields' columns are `TaskSpec`'s). Defaults
    are the DBQ catalogue columns (Burberry etc.).

    `image` is one column or a list of columns (an item's photos, in order; see the module docstring).
    `id: null` uses the row number as product id (tables without one).
    """

    image: Any = "imageurl"  # str | list[str]: Any, as OmegaConf 2.3 types no unions
    id: str | None = "product_code"

    def __post_init__(self) -> None:
        image = given = self.image
        if not isinstance(image, str):  # a list from YAML or the command line: a tuple (frozen, hashable)
            image = tuple(image) if isinstance(image, Iterable) and not isinstance(image, Mapping) else image
            object.__setattr__(self, "image", image)
        if not (isinstance(image, str) and image or isinstance(image, tuple) and image
                and all(isinstance(column, str) and column for column in image)):
            raise ValueError(f"data.columns.image must be a column name or a non-empty list of column names, "
                             f"got {given!r}")

    @property
    def photo_columns(self) -> tuple[str, ...]:
        """The column(s) holding an item's photos, in order."""
        return (self.image,) if isinstance(self.image, str) else self.image

    def check(self, available: Iterable[str]) -> None:
        """Fail early, naming the config key, when a mapped column is not in the table."""
        available = list(available)
        mapped = [("image" if isinstance(self.image, str) else f"image[{i}]", column)
                  for i, column in enumerate(self.photo_columns)]
        mapped += [(field, column) for field, column in vars(self).items() if field != "image"]
        missing = [
            f"data.columns.{field} = {column!r} is not a column of the table"
            for field, column in mapped
            if column is not None and column not in available
        ]
        if missing:
            raise ValueError("\n".join(missing) + f"\navailable columns: {available}")


@dataclass(frozen=True)
class ProductRow:
    """One valid item: what the model sees (its photos) and learns to say (`values`, keyed by field name)."""

    source_row: int
    product_id: str
    values: Mapping[str, FieldValue]
    images: tuple[str, ...]  # URLs or paths exactly as in the table, in order (at least one)


@dataclass(frozen=True)
class DroppedRow:
    source_row: int
    product_id: str
    image: str  # the photo that dropped the row, or the image cell(s) as written
    reason: str
    detail: str


def item_photos(record: Mapping, columns: ColumnMap) -> tuple[str, ...]:
    """An item's photos (URLs or paths as written), in column order, each cell's list in its order;
    empty and placeholder values are no photo."""
    photos = []
    for column in columns.photo_columns:
        photos += [text for text in map(_text, _cell_photos(record.get(column)))
                   if text and text.lower() not in PLACEHOLDERS]
    return tuple(photos)


def _cell_photos(value: object) -> list:
    """The photos of one cell: a list's items, a JSON array's items, or the value itself."""
    if isinstance(value, (list, tuple)):
        return list(value)
    if hasattr(value, "tolist") and not isinstance(value, str):  # numpy: an array (a pandas list cell), a scalar
        items = value.tolist()
        return items if isinstance(items, list) else [items]
    if isinstance(value, str) and value.lstrip().startswith("["):
        try:
            items = json.loads(value)
        except ValueError:
            return [value]  # a path that happens to start with "[": taken as written
        if isinstance(items, list) and all(isinstance(item, str) for item in items):
            return items
    return [value]


def validate_rows(
    records: Iterable[Mapping], columns: ColumnMap, task: TaskSpec
) -> tuple[list[ProductRow], list[DroppedRow]]:
    """Turn raw table records into valid items (the task's fields read by type) and dropped rows with reasons."""
    kept: list[ProductRow] = []
    dropped: list[DroppedRow] = []
    seen: set[str] = set()
    for index, record in enumerate(records):
        product_id = str(index) if columns.id is None else _text(record.get(columns.id))
        images = item_photos(record, columns)
        try:
            row = _validate_one(index, product_id, images, record, columns, task)
            if row.product_id in seen:
                raise InvalidValue("duplicate_id", f"product id {row.product_id!r} already used by an earlier row")
        except InvalidValue as problem:
            cells = " ".join(_text(record.get(column)) for column in columns.photo_columns)  # as written
            dropped.append(DroppedRow(index, product_id, cells, problem.reason, problem.detail))
            continue
        seen.add(row.product_id)
        kept.append(row)
    return kept, dropped


def _validate_one(
    index: int, product_id: str, images: tuple[str, ...], record: Mapping, columns: ColumnMap, task: TaskSpec
) -> ProductRow:
    if not product_id or product_id.lower() in PLACEHOLDERS:
        product_id = f"row-{index}"  # keep the row; ids only group splits and name predictions
    values = field_values(record, task)
    if not images:
        cells = [record.get(column) for column in columns.photo_columns]
        raise InvalidValue("missing_image", f"image is {cells[0] if len(cells) == 1 else cells!r}")
    return ProductRow(index, product_id, values, images)
