"""The fixed product task of title, category and price (`PromptTemplate`), as data, training and
inference use it until they read the configurable `TaskSpec` (phi3v.task.spec), which reproduces it.

Default wording is exactly the seed notebook's: user turn `<|image_1|>What is shown in this image?`
and answer `Product: {title}, Category: {category}, Full Price: {price}`, with the price written as
Python writes the float (`1250.0`). `price_format` changes only how the price is written.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace

from phi3v.modeling.tokenizer import chat_prompt

from .fields import DEFAULT_FIELDS
from .numbers import price_from_answer
from .photos import question_for, question_problems
from .spec import DEFAULT_ANSWER, DEFAULT_QUESTION, TaskSpec

DEFAULT_PRICE_FORMAT = "{}"  # str(float): 1250.0, 1299.99 — the seed's format
_FIELD = re.compile(r"\\\{(title|category|price)\\\}")  # a field as it appears after re.escape


@dataclass(frozen=True)
class PromptTemplate:
    """How a catalogue row becomes a chat prompt and an answer.

    Args:
        question: the user turn; `<|image_1|>` marks where the photo goes, and stands for all of an
            item's photos (phi3v.task.photos.question_for).
        answer: the assistant answer with `{title}`, `{category}`, `{price}` fields.
        price_format: a `str.format` pattern for the float price, e.g. "{:,.2f}" -> "1,250.00".
    """

    question: str = DEFAULT_QUESTION
    answer: str = DEFAULT_ANSWER
    price_format: str = DEFAULT_PRICE_FORMAT

    def __post_init__(self) -> None:
        problems = []
        if "<|image_1|>" not in self.question:
            problems.append(f"data.prompt.question must contain <|image_1|>, got {self.question!r}")
        else:
            problems += question_problems(self.question, "data.prompt.question")
        for field in ("{title}", "{category}", "{price}"):
            if field not in self.answer:
                problems.append(f"data.prompt.answer must contain {field}, got {self.answer!r}")
        try:
            self.price_format.format(1250.0)
        except (ValueError, IndexError, KeyError) as error:
            problems.append(f"data.prompt.price_format {self.price_format!r} cannot format a float: {error}")
        if problems:
            raise ValueError("\n".join(problems))

    def prompt(self, photos: int = 1) -> str:
        """The generation prompt for an item with `photos` photos (ends with `<|assistant|>\\n`)."""
        return chat_prompt([{"role": "user", "content": question_for(self.question, photos)}])

    def format_price(self, price: float) -> str:
        return self.price_format.format(float(price))

    def target(self, title: str, category: str, price: float) -> str:
        return self.answer.format(title=title, category=category, price=self.format_price(price))

    def task(self) -> TaskSpec:
        """The same task as a `TaskSpec`: this question and answer, the seed's fields, this price format."""
        title, category, price = DEFAULT_FIELDS
        price_format = None if self.price_format == DEFAULT_PRICE_FORMAT else self.price_format
        return TaskSpec((title, category, replace(price, format=price_format)), self.question, self.answer)

    def parse(self, answer: str) -> ParsedAnswer:
        """Read title, category and price back from a (generated) answer in this template."""
        match = _answer_pattern(self.answer).search(answer.strip())
        if match is None:
            return ParsedAnswer(None, None, price_from_answer(answer))
        fields = match.groupdict()
        price = price_from_answer(fields["price"]) if "price" in fields else price_from_answer(answer)
        return ParsedAnswer(_stripped(fields.get("title")), _stripped(fields.get("category")), price)


@dataclass(frozen=True)
class ParsedAnswer:
    title: str | None
    category: str | None
    price: float | None


def _answer_pattern(template: str) -> re.Pattern:
    """A regex with named groups for the template's fields; spacing is matched loosely."""
    escaped = re.escape(template).replace("\\ ", r"\s*")
    pattern = _FIELD.sub(lambda m: f"(?P<{m.group(1)}>.*?)", escaped)
    return re.compile(pattern + r"\s*$", re.DOTALL | re.IGNORECASE)


def _stripped(value: str | None) -> str | None:
    return None if value is None else value.strip()
