"""The task as an export records it (`prompt.json`): inference asks the question the model was trained with
and reads its answers with the same fields.

    {"question": "<|image_1|>What is shown in this image?", "answer": "Product: {title}, ...",
     "fields": [{"name": "title", "column": "title", "type": "text", "format": null, "label": "Product"}, ...]}

Exports written before the fields were configurable hold the fixed title/category/price template instead,
`{"question", "answer", "price_format"}`; `task_from_record` reads those as the seed's three fields, the price
written with that format, so an old export answers and parses exactly as it did.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, replace
from typing import Any

from .fields import DEFAULT_FIELDS
from .spec import TaskSpec

LEGACY_PRICE_FORMAT = "{}"  # str(float): 1250.0, the seed's format (what `price_format` meant by default)
_LEGACY_KEYS = frozenset({"question", "answer", "price_format"})


def task_record(task: TaskSpec) -> dict[str, Any]:
    """The task as plain JSON values: question, answer and every field's arguments."""
    return {"question": task.question, "answer": task.answer, "fields": [asdict(spec) for spec in task.fields]}


def task_from_record(record: Mapping[str, Any]) -> TaskSpec:
    """The task a `prompt.json` holds: `task_record`'s layout, or an older export's fixed template."""
    if "fields" in record:
        return TaskSpec(tuple(record["fields"]), record["question"], record["answer"])
    unknown = sorted(set(record) - _LEGACY_KEYS)
    if unknown:
        raise ValueError(f"prompt.json has neither `fields` nor only {sorted(_LEGACY_KEYS)}: unknown keys {unknown}")
    title, category, price = DEFAULT_FIELDS
    price_format = record.get("price_format", LEGACY_PRICE_FORMAT)
    price = replace(price, format=None if price_format == LEGACY_PRICE_FORMAT else price_format)
    return TaskSpec((title, category, price), record.get("question", TaskSpec.question), record.get("answer"))
