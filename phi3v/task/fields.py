"""One field of the task: a thing the model reads from the photos and writes in its answer.

A field has a name (its `{name}` in the answer, its metric prefix: `val/<name>_mape`), the catalogue
column that holds its truth, a type that decides how it is written, read back and scored, and an
optional `str.format` pattern. Types:

  number    a positive float (price, mileage, area): written as Python writes the float (1250.0)
            unless `format` says otherwise; scored by percentage error (phi3v.task.scoring).
  integer   a whole number (year, rooms): written as an int (2019); scored like a number, plus exact match.
  category  one of a closed set of labels (category, colour, make): scored by accuracy and macro-F1.
  text      free text (title): scored by exact match and character similarity.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from .numbers import read_number

FIELD_TYPES = ("number", "integer", "category", "text")
NUMERIC_TYPES = frozenset({"number", "integer"})
FieldValue = float | int | str | None  # a field's typed value: float, int, str (category/text), None = missing

# What `format` is tried on when the task is built: a format that cannot write this, or writes something
# that does not read back as this, is refused before any data is read.
_SAMPLES: dict[str, FieldValue] = {"number": 1250.0, "integer": 2019, "category": "SCARVES", "text": "Check Scarf"}
_INT_LIMIT = 2**63  # larger "integers" are not counts or years: read as missing rather than kept exactly


@dataclass(frozen=True)
class FieldSpec:
    """One field of the answer.

    Args:
        name: the placeholder `{name}` in the answer and the metric prefix; a Python identifier.
        column: the catalogue column holding the true value; None = `name`.
        type: "number", "integer", "category" or "text" (see the module docstring).
        format: a `str.format` pattern for the value, e.g. "{:,.2f}" -> "1,250.00"; None writes the value
            as Python does (`str(1250.0)` = "1250.0", the seed's price format).
        label: the words before the value when the answer is built from the fields ("Full Price" ->
            "Full Price: {price}"); None = the name with "_" as spaces, capitalised. An explicit
            `TaskSpec.answer` is used as written instead.
    """

    name: str
    column: str | None = None
    type: str = "text"
    format: str | None = None
    label: str | None = None

    def __post_init__(self) -> None:
        if self.column is None:
            object.__setattr__(self, "column", self.name)
        if self.label is None and isinstance(self.name, str):
            object.__setattr__(self, "label", self.name[:1].upper() + self.name[1:].replace("_", " "))

    @property
    def numeric(self) -> bool:
        return self.type in NUMERIC_TYPES

    def write(self, value: FieldValue) -> str:
        """The value as the answer states it; ValueError naming the field for a value of the wrong kind."""
        if self.numeric:
            value = self._number(value)
        elif value is None:
            raise ValueError(f"field {self.name!r} has no value to write")
        else:
            value = str(value)
        return (self.format or "{}").format(value)

    def _number(self, value: FieldValue) -> float | int:
        try:
            number = float(value) if not isinstance(value, bool) else math.nan
        except (TypeError, ValueError):
            number = math.nan
        if not math.isfinite(number) or (self.type == "integer" and not number.is_integer()):
            raise ValueError(f"field {self.name!r} holds {self.type}s, got {value!r}")
        return int(number) if self.type == "integer" else number

    def parse(self, text: str | None, label: re.Pattern | None = None) -> FieldValue:
        """The typed value in `text` (a piece of an answer), None when it holds none.

        number / integer: `read_number` (after `label` when it occurs, else the last number); an integer
        field reads only a whole number ("2019", "85,000"; "2019.5" is missing). category / text: the text
        with its ends stripped; empty is missing.
        """
        if text is None:
            return None
        if not self.numeric:
            return text.strip() or None
        return self.number_value(read_number(text, label))

    def number_value(self, number: float | None) -> FieldValue:
        """A read number as this numeric field's value: an integer field takes whole numbers only."""
        if number is None or self.type == "number":
            return number
        return int(number) if number.is_integer() and abs(number) < _INT_LIMIT else None

    def problems(self, key: str) -> list[str]:
        """Everything wrong with this field, each naming `key` (e.g. "data.task.fields[2]")."""
        if not isinstance(self.name, str) or not self.name.isidentifier():
            return [f"{key}.name must be a Python identifier (letters, digits, _), got {self.name!r}"]
        problems = []
        if self.type not in FIELD_TYPES:
            problems.append(f"{key}.type {self.type!r} is not a field type; use one of {', '.join(FIELD_TYPES)}")
        if not isinstance(self.column, str) or not self.column:
            problems.append(f"{key}.column must name a catalogue column, got {self.column!r}")
        if self.type in FIELD_TYPES and self.format is not None:
            problems += self._format_problems(key)
        return problems

    def _format_problems(self, key: str) -> list[str]:
        sample = _SAMPLES[self.type]
        try:
            written = self.write(sample)
        except (ValueError, IndexError, KeyError, TypeError) as error:
            return [f"{key}.format {self.format!r} cannot format a {self.type} ({sample!r}): {error}"]
        if self.parse(written) != sample:
            return [f"{key}.format {self.format!r} writes {sample!r} as {written!r}, which reads back as "
                    f"{self.parse(written)!r}: the answer could not be scored"]
        return []


# The seed's task: the Burberry catalogue's columns, answered "Product: ..., Category: ..., Full Price: ...".
DEFAULT_FIELDS = (
    FieldSpec("title", "title", "text", label="Product"),
    FieldSpec("category", "category3_code", "category", label="Category"),
    FieldSpec("price", "full_price", "number", label="Full Price"),
)
