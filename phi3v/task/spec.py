"""The task: the question asked about an item's photos, the fields its answer states, and reading them back.

`TaskSpec` is an ordered list of `FieldSpec`s, the question, and the answer template (built from the
fields' labels when not given). The default is the seed notebook's task byte for byte: the question
`<|image_1|>What is shown in this image?` and the answer `Product: {title}, Category: {category},
Full Price: {price}` with the price as Python writes the float (`1250.0`).

Config, `data.task` (the keys are this class's arguments; phi3v.data.spec.DataSpec.task):

    task:
      question: "<|image_1|>What is shown in this image?"  # <|image_1|> stands for all of an item's photos
      answer: null             # null = "<label>: {<name>}" per field, joined by ", "
      fields:                  # in answer order; type: number | integer | category | text
        - {name: title, column: title, type: text, label: Product}
        - {name: category, column: category3_code, type: category, label: Category}
        - {name: price, column: full_price, type: number, label: Full Price}  # format "{:,.2f}" = 1,250.00

A car catalogue: `fields: [{name: make, type: category}, {name: year, type: integer}, {name: mileage,
type: number, format: "{:,.0f} km"}, {name: price, type: number}]` answers
"Make: Audi, Year: 2019, Mileage: 85,000 km, Price: 23500.0".

Parsing (`TaskSpec.parse`) gives every field a typed value or None (missing, per field):
1. When the answer has the template's shape, each field is the text between its neighbours' literal
   text (spaces matched loosely, case ignored), so a title may contain commas. A number is the one
   after its label inside that text when there, else the last one (`read_number`).
2. Otherwise each field is found by its label (the template's words before it, e.g. "Full Price",
   the last occurrence) and runs to the next field's label: fields in any order, some missing. A
   number field is the first number there; the task's only numeric field with no label in the answer
   takes the last number of the answer (the seed's `price_from_answer`).
"""

from __future__ import annotations

import functools
import re
import string
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from dataclasses import fields as dataclass_fields
from typing import NamedTuple

from phi3v.modeling.tokenizer import chat_prompt

from .fields import DEFAULT_FIELDS, FieldSpec, FieldValue
from .numbers import parse_number
from .photos import question_for, question_problems

DEFAULT_QUESTION = "<|image_1|>What is shown in this image?"
DEFAULT_ANSWER = "Product: {title}, Category: {category}, Full Price: {price}"
CONFIG_KEY = "data.task"
_SEPARATORS = ",;|"  # stripped, with spaces, from the end of a field found by its label
_FIELD_KEYS = tuple(f.name for f in dataclass_fields(FieldSpec))


@dataclass(frozen=True)
class TaskSpec:
    """What the model is asked and answers.

    Args:
        fields: the answer's fields in order (`FieldSpec`s, or mappings of their arguments from YAML).
        question: the user turn; `<|image_1|>` marks the photos (phi3v.task.photos).
        answer: the answer template with one `{name}` per field; None = built from the fields' labels.
    """

    fields: tuple[FieldSpec, ...] = DEFAULT_FIELDS
    question: str = DEFAULT_QUESTION
    answer: str | None = None

    def __post_init__(self) -> None:
        specs, problems = _field_specs(self.fields)
        object.__setattr__(self, "fields", specs)
        if self.answer is None and specs and not problems:
            object.__setattr__(self, "answer", ", ".join(_built_piece(spec) for spec in specs))
        for index, spec in enumerate(specs):
            problems += spec.problems(f"{CONFIG_KEY}.fields[{index}]")
        names = [spec.name for spec in specs]
        problems += [f"{CONFIG_KEY}.fields: two fields are named {name!r}" for name in _repeated(names)]
        problems += question_problems(self.question, f"{CONFIG_KEY}.question")
        if self.answer is not None:  # else it could not be built: the fields' problems say why
            problems += _template(self.answer, names)[2]
        if problems:
            raise ValueError("\n".join(problems))

    # ---- asking and answering -------------------------------------------------------------------
    @property
    def names(self) -> tuple[str, ...]:
        return tuple(spec.name for spec in self.fields)

    def field(self, name: str) -> FieldSpec:
        for spec in self.fields:
            if spec.name == name:
                return spec
        raise KeyError(f"no field named {name!r}; fields: {', '.join(self.names)}")

    def question_for(self, photos: int = 1) -> str:
        """The question for an item with `photos` photos (phi3v.task.photos.question_for)."""
        return question_for(self.question, photos)

    def prompt(self, photos: int = 1) -> str:
        """The generation prompt (ends with `<|assistant|>\\n`)."""
        return chat_prompt([{"role": "user", "content": self.question_for(photos)}])

    def answer_for(self, values: Mapping[str, FieldValue]) -> str:
        """The answer stating `values` (keyed by field name) in the template; KeyError naming a missing field."""
        missing = [name for name in self.names if name not in values]
        if missing:
            raise KeyError(f"no value for field(s) {', '.join(missing)} of the task")
        written = {spec.name: spec.write(values[spec.name]) for spec in self.fields}
        template = _compiled(self.answer, self.names)
        return "".join(literal + written[name] for literal, name in template.pieces) + template.tail

    def check_columns(self, available: Iterable[str]) -> None:
        """Fail early, naming the config key, when a field's column is not in the catalogue table."""
        available = list(available)
        missing = [
            f"{CONFIG_KEY}.fields[{index}].column = {spec.column!r} ({spec.name}) is not a column of the table"
            for index, spec in enumerate(self.fields)
            if spec.column not in available
        ]
        if missing:
            raise ValueError("\n".join(missing) + f"\navailable columns: {available}")

    # ---- reading an answer back --------------------------------------------------------------------
    def parse(self, answer: str) -> dict[str, FieldValue]:
        """Every field's typed value in a (generated) answer, None where it cannot be read."""
        template = _compiled(self.answer, self.names)
        labels = template.labels
        match = template.pattern.search(answer.strip())
        if match is not None:
            return {spec.name: spec.parse(match.group(spec.name), labels[spec.name]) for spec in self.fields}
        segments = _segments(answer, labels)
        numeric_fields = [spec.name for spec in self.fields if spec.numeric]
        values = {}
        for spec in self.fields:
            segment = segments.get(spec.name)
            if spec.numeric and len(numeric_fields) == 1:
                values[spec.name] = spec.parse(answer, labels[spec.name])  # the seed's price_from_answer
            elif spec.numeric:
                values[spec.name] = spec.number_value(parse_number(segment) if segment is not None else None)
            else:
                values[spec.name] = spec.parse(None if segment is None else segment.strip().rstrip(_SEPARATORS))
        return values


def _field_specs(entries) -> tuple[tuple[FieldSpec, ...], list[str]]:
    """FieldSpecs from FieldSpecs or YAML mappings; a mapping that cannot be one is a problem, not an exception."""
    if isinstance(entries, (str, Mapping)) or not isinstance(entries, Iterable):
        return (), [f"{CONFIG_KEY}.fields must be a list of fields, got {entries!r}"]
    specs, problems = [], []
    for index, entry in enumerate(entries):
        key = f"{CONFIG_KEY}.fields[{index}]"
        if isinstance(entry, FieldSpec):
            specs.append(entry)
        elif isinstance(entry, Mapping):
            unknown = sorted(set(entry) - set(_FIELD_KEYS))
            if unknown or "name" not in entry:
                problems.append(f"{key} needs a name and only the keys {', '.join(_FIELD_KEYS)}; got {dict(entry)}")
                continue
            specs.append(FieldSpec(**entry))
        else:
            problems.append(f"{key} must be a mapping with name, column, type, format, label; got {entry!r}")
    if not specs and not problems:
        problems.append(f"{CONFIG_KEY}.fields is empty: the answer needs at least one field")
    return tuple(specs), problems


def _built_piece(spec: FieldSpec) -> str:
    return f"{spec.label}: {{{spec.name}}}" if spec.label else f"{{{spec.name}}}"


def _repeated(items: list[str]) -> list[str]:
    return sorted({item for item in items if items.count(item) > 1})


class _Compiled(NamedTuple):
    pieces: tuple[tuple[str, str], ...]  # (literal text before the placeholder, field name)
    tail: str  # the literal text after the last placeholder
    pattern: re.Pattern  # the whole answer, one named group per field
    labels: dict[str, re.Pattern | None]  # each field's label, None when the text before it has no words


@functools.lru_cache(maxsize=64)
def _compiled(answer: str, names: tuple[str, ...]) -> _Compiled:
    """The parts of a validated template (cached: the same template is parsed for every answer)."""
    pieces, tail, _ = _template(answer, list(names))
    return _Compiled(pieces, tail, _answer_pattern(pieces, tail), _label_patterns(pieces))


def _template(answer: str | None, names: list[str]) -> tuple[tuple[tuple[str, str], ...], str, list[str]]:
    """(literal text before each placeholder, field name) pairs and the closing text, or the problems."""
    key = f"{CONFIG_KEY}.answer"
    if not isinstance(answer, str):
        return (), "", [f"{key} must be a string with one {{name}} per field, or null, got {answer!r}"]
    try:
        parsed = list(string.Formatter().parse(answer))
    except ValueError as error:
        return (), "", [f"{key} {answer!r} is not a valid template: {error}"]
    pieces, tail, problems = [], "", []
    for literal, name, spec, conversion in parsed:
        if name is None:
            tail = literal
            continue
        if spec or conversion:
            problems.append(f"{key}: write {{{name}}} and put the format in the field's `format`, not {answer!r}")
        elif name not in names:
            problems.append(f"{key} has {{{name}}} but no field of {CONFIG_KEY}.fields is named {name!r} "
                            f"(fields: {', '.join(names)})")
        elif pieces and not literal.strip():
            problems.append(f"{key} needs text between {{{pieces[-1][1]}}} and {{{name}}} to tell them apart")
        pieces.append((literal, name))
    used = [name for _, name in pieces]
    problems += [f"{key} has {{{name}}} more than once" for name in _repeated(used)]
    problems += [f"{CONFIG_KEY}.fields[{i}] ({name}) is not in {key} {answer!r}: add {{{name}}} or remove the field"
                 for i, name in enumerate(names) if name not in used]
    return tuple(pieces), tail, problems


def _loose(literal: str) -> str:
    return re.escape(literal).replace("\\ ", r"\s*")


def _answer_pattern(pieces: tuple[tuple[str, str], ...], tail: str) -> re.Pattern:
    """A regex with one named group per field; spacing is matched loosely, case ignored."""
    body = "".join(f"{_loose(literal)}(?P<{name}>.*?)" for literal, name in pieces)
    return re.compile(body + _loose(tail) + r"\s*$", re.DOTALL | re.IGNORECASE)


def _label_patterns(pieces: tuple[tuple[str, str], ...]) -> dict[str, re.Pattern | None]:
    """Each field's label, the words of the literal text before it ("Full Price" of ", Full Price: "),
    as a pattern: words separated by any spacing, an optional ":" or "=" after, not inside a word."""
    patterns = {}
    for literal, name in pieces:
        words = literal.strip().lstrip(_SEPARATORS).strip().rstrip(":=").split()
        body = r"\s*".join(re.escape(word) for word in words)
        patterns[name] = re.compile(rf"(?<!\w){body}\s*[:=]?", re.IGNORECASE) if words else None
    return patterns


def _segments(answer: str, labels: dict[str, re.Pattern | None]) -> dict[str, str]:
    """Each labelled field's text: after the last occurrence of its label up to the next label of any field.

    A label found inside a longer label's match ("Price" in "Full Price:") is not a label there.
    """
    found = [(m.start(), m.end(), name) for name, label in labels.items() if label for m in label.finditer(answer)]
    found = [f for f in found if not any(_inside(f, o) for o in found)]
    found.sort()
    segments = {}
    for position, (_, end, name) in enumerate(found):
        following = [start for start, _, _ in found[position + 1 :] if start >= end]
        segments[name] = answer[end : following[0] if following else len(answer)]  # the last one wins
    return segments


def _inside(inner: tuple[int, int, str], outer: tuple[int, int, str]) -> bool:
    """Whether the match `inner` (start, end, field) lies within the longer match `outer`."""
    return outer[0] <= inner[0] and inner[1] <= outer[1] and outer[1] - outer[0] > inner[1] - inner[0]
