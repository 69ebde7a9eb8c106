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

The fields are read in task order, then the photo: a row's reason is its first problem. A category
field's "N.A." (or missing) is kept as "N.A.": the item is still a valid example.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from phi3v.task import FieldValue, TaskSpec

# PLACEHOLDERS and InvalidValue are imported from here too (download.py, tests)
from .values import PLACEHOLDERS, InvalidValue, field_values
from .values import cell_text as _text


@dataclass(frozen=True)
class ColumnMap:
    """Which source columns hold an item's photo and its id (the fields' columns are `TaskSpec`'s). Defaults
    are the DBQ catalogue columns (Burberry etc.).

    `id: null` uses the row number as product id (tables without one).
    """

    image: str = "imageurl"
    id: str | None = "product_code"

    def check(self, available: Iterable[str]) -> None:
        """Fail early, naming the config key, when a mapped column is not in the table."""
        available = list(available)
        missing = [
            f"data.columns.{field} = {column!r} is not a column of the table"
            for field, column in vars(self).items()
            if column is not None and column not in available
        ]
        if missing:
            raise ValueError("\n".join(missing) + f"\navailable columns: {available}")


@dataclass(frozen=True)
class ProductRow:
    """One valid item: what the model sees (image) and learns to say (`values`, keyed by field name)."""

    source_row: int
    product_id: str
    values: Mapping[str, FieldValue]
    image: str  # URL or path exactly as in the table


@dataclass(frozen=True)
class DroppedRow:
    source_row: int
    product_id: str
    image: str
    reason: str
    detail: str


def validate_rows(
    records: Iterable[Mapping], columns: ColumnMap, task: TaskSpec
) -> tuple[list[ProductRow], list[DroppedRow]]:
    """Turn raw table records into valid items (the task's fields read by type) and dropped rows with reasons."""
    kept: list[ProductRow] = []
    dropped: list[DroppedRow] = []
    seen: set[str] = set()
    for index, record in enumerate(records):
        product_id = str(index) if columns.id is None else _text(record.get(columns.id))
        image = _text(record.get(columns.image))
        try:
            row = _validate_one(index, product_id, image, record, columns, task)
            if row.product_id in seen:
                raise InvalidValue("duplicate_id", f"product id {row.product_id!r} already used by an earlier row")
        except InvalidValue as problem:
            dropped.append(DroppedRow(index, product_id, image, problem.reason, problem.detail))
            continue
        seen.add(row.product_id)
        kept.append(row)
    return kept, dropped


def _validate_one(
    index: int, product_id: str, image: str, record: Mapping, columns: ColumnMap, task: TaskSpec
) -> ProductRow:
    if not product_id or product_id.lower() in PLACEHOLDERS:
        product_id = f"row-{index}"  # keep the row; ids only group splits and name predictions
    values = field_values(record, task)
    if not image or image.lower() in PLACEHOLDERS:
        raise InvalidValue("missing_image", f"image is {record.get(columns.image)!r}")
    return ProductRow(index, product_id, values, image)
