"""Catalogue rows: mapping a table's columns to products, and validating every value.

Any image+text+price table works once `ColumnMap` names its columns. A row that cannot be a
training example is dropped with a stable reason key (counted in the prepare report), never
silently kept or silently lost:

  bad_price      price missing, "N.A.", not a number, NaN/inf, zero or negative
  empty_title    title missing or blank
  missing_image  no image URL/path
  duplicate_id   a product id seen on an earlier row (the first row is kept)

A category of "N.A." (or missing) is kept as "N.A.": the product is still a valid example.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from phi3v.task import parse_number

MISSING_CATEGORY = "N.A."
# Cells that mean "no value" in scraped catalogues (compared case-insensitively, after stripping): a
# missing id, image URL or category, or no price. download.py reads the same set for image URLs.
PLACEHOLDERS = frozenset({"", "n.a.", "n/a", "na", "nan", "none", "null", "-"})


@dataclass(frozen=True)
class ColumnMap:
    """Which source column holds each field. Defaults are the DBQ catalogue columns (Burberry etc.).

    `id: null` uses the row number as product id (tables without one).
    """

    image: str = "imageurl"
    title: str = "title"
    category: str = "category3_code"
    price: str = "full_price"
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
    """One valid product: what the model sees (image) and learns to say (title, category, price)."""

    source_row: int
    product_id: str
    title: str
    category: str
    price: float
    image: str  # URL or path exactly as in the table


@dataclass(frozen=True)
class DroppedRow:
    source_row: int
    product_id: str
    image: str
    reason: str
    detail: str


class InvalidValue(ValueError):
    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason, self.detail = reason, detail


def parse_price(value: object) -> float:
    """A positive, finite price from a number or text ("1,250.00", "$490", "490 USD")."""
    if isinstance(value, bool) or value is None:
        raise InvalidValue("bad_price", f"price is {value!r}")
    if isinstance(value, (int, float)):
        price = float(value)
    else:
        text = str(value).strip()
        if text.lower() in PLACEHOLDERS or text.lower() in {"inf", "-inf", "infinity"}:
            raise InvalidValue("bad_price", f"price is {value!r}")
        if text.startswith("-"):
            raise InvalidValue("bad_price", f"price is negative: {value!r}")
        price = parse_number(text)
        if price is None:
            raise InvalidValue("bad_price", f"price is not a number: {value!r}")
    if not math.isfinite(price) or price <= 0:
        raise InvalidValue("bad_price", f"price must be positive and finite, got {value!r}")
    return price


def _text(value: object) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return str(value).strip()


def validate_rows(records: Iterable[Mapping], columns: ColumnMap) -> tuple[list[ProductRow], list[DroppedRow]]:
    """Turn raw table records into valid products and dropped rows with reasons."""
    kept: list[ProductRow] = []
    dropped: list[DroppedRow] = []
    seen: set[str] = set()
    for index, record in enumerate(records):
        product_id = str(index) if columns.id is None else _text(record.get(columns.id))
        image = _text(record.get(columns.image))
        try:
            row = _validate_one(index, product_id, image, record, columns)
            if row.product_id in seen:
                raise InvalidValue("duplicate_id", f"product id {row.product_id!r} already used by an earlier row")
        except InvalidValue as problem:
            dropped.append(DroppedRow(index, product_id, image, problem.reason, problem.detail))
            continue
        seen.add(row.product_id)
        kept.append(row)
    return kept, dropped


def _validate_one(index: int, product_id: str, image: str, record: Mapping, columns: ColumnMap) -> ProductRow:
    if not product_id or product_id.lower() in PLACEHOLDERS:
        product_id = f"row-{index}"  # keep the row; ids only group splits and name predictions
    title = _text(record.get(columns.title))
    if not title:
        raise InvalidValue("empty_title", "title is empty")
    if not image or image.lower() in PLACEHOLDERS:
        raise InvalidValue("missing_image", f"image is {record.get(columns.image)!r}")
    price = parse_price(record.get(columns.price))
    category = _text(record.get(columns.category)) or MISSING_CATEGORY
    if category.lower() in PLACEHOLDERS:
        category = MISSING_CATEGORY
    return ProductRow(index, product_id, title, category, price, image)
