"""Reading a catalogue cell as a field's typed value (phi3v.task.FieldSpec), or the reason its row is dropped.

  number    a positive, finite number, from a number or text ("1,250.00", "$490", "490 USD", "85,000 km")
  integer   the same, and whole ("2019", 2019.0; "2019.5" is not one)
  category  the text with its ends stripped; empty, missing or a placeholder ("N.A.", "n/a", ...) is kept as
            the class "N.A.": the item is still a valid example
  text      the text with its ends stripped; empty or missing drops the row

A bad number drops its row as `bad_<field>` (`bad_price`), an empty text as `empty_<field>` (`empty_title`).
Numbers must be positive because every number is scored by its percentage error, which a true 0 leaves
undefined (phi3v.task.scoring).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from phi3v.task import FieldSpec, FieldValue, TaskSpec, parse_number

MISSING_CATEGORY = "N.A."
# Cells that mean "no value" in scraped catalogues (compared case-insensitively, after stripping): a
# missing id, image URL or category, or no number. download.py reads the same set for image URLs.
PLACEHOLDERS = frozenset({"", "n.a.", "n/a", "na", "nan", "none", "null", "-"})
_INT_LIMIT = 2**63  # the manifest stores integers as int64


class InvalidValue(ValueError):
    """A cell that cannot be a training example's value; `reason` is the stable key counted in the prepare report."""

    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason, self.detail = reason, detail


def field_values(record: Mapping, task: TaskSpec) -> dict[str, FieldValue]:
    """Every field's typed value in a table record, keyed by field name; InvalidValue for the first bad one."""
    return {spec.name: field_value(spec, record.get(spec.column)) for spec in task.fields}


def field_value(spec: FieldSpec, value: object) -> FieldValue:
    """One cell as `spec`'s typed value (module docstring); InvalidValue naming the field otherwise."""
    if spec.numeric:
        number = positive_number(value, spec.name)
        if spec.type == "number":
            return number
        if not number.is_integer() or number >= _INT_LIMIT:
            raise InvalidValue(f"bad_{spec.name}", f"{spec.name} must be a whole number, got {value!r}")
        return int(number)
    text = cell_text(value)
    if spec.type == "category":
        return MISSING_CATEGORY if text.lower() in PLACEHOLDERS else text
    if not text:
        raise InvalidValue(f"empty_{spec.name}", f"{spec.name} is empty")
    return text


def positive_number(value: object, name: str = "price") -> float:
    """A positive, finite number from a number or text ("1,250.00", "$490", "490 USD"); InvalidValue
    (`bad_<name>`) otherwise."""
    reason = f"bad_{name}"
    if isinstance(value, bool) or value is None:
        raise InvalidValue(reason, f"{name} is {value!r}")
    if isinstance(value, (int, float)):
        number = float(value)
    else:
        text = str(value).strip()
        if text.lower() in PLACEHOLDERS or text.lower() in {"inf", "-inf", "infinity"}:
            raise InvalidValue(reason, f"{name} is {value!r}")
        if text.startswith("-"):
            raise InvalidValue(reason, f"{name} is negative: {value!r}")
        number = parse_number(text)
        if number is None:
            raise InvalidValue(reason, f"{name} is not a number: {value!r}")
    if not math.isfinite(number) or number <= 0:
        raise InvalidValue(reason, f"{name} must be positive and finite, got {value!r}")
    return number


def cell_text(value: object) -> str:
    """A cell as text with its ends stripped; missing (None, NaN) is ""."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return str(value).strip()
