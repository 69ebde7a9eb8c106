"""The product task: the question asked about a photo, the answer the model learns, parsing it back,
and how far a parsed price is from the truth. Data (batching), training (evaluation) and inference
(predict, the web demo) all read it from here.

Default wording is exactly the seed notebook's: user turn `<|image_1|>What is shown in this image?`
and answer `Product: {title}, Category: {category}, Full Price: {price}`, with the price written as
Python writes the float (`1250.0`). `price_format` changes only how the price is written.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from phi3v.modeling.tokenizer import chat_prompt

DEFAULT_QUESTION = "<|image_1|>What is shown in this image?"
DEFAULT_ANSWER = "Product: {title}, Category: {category}, Full Price: {price}"
DEFAULT_PRICE_FORMAT = "{}"  # str(float): 1250.0, 1299.99 — the seed's format

# A number as users and models write prices: "1,250.00", "$490", "490 USD", "1 250", "USD1250".
_NUMBER = re.compile(r"(?<![\d.])(\d{1,3}(?:[, ]\d{3})+|\d+)(\.\d+)?(?![\d])")
_PRICE_LABEL = re.compile(r"full\s*price\s*[:=]?", re.IGNORECASE)
_FIELD = re.compile(r"\\\{(title|category|price)\\\}")  # a field as it appears after re.escape


@dataclass(frozen=True)
class PromptTemplate:
    """How a catalogue row becomes a chat prompt and an answer.

    Args:
        question: the user turn; `<|image_1|>` marks where the photo goes.
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
        for field in ("{title}", "{category}", "{price}"):
            if field not in self.answer:
                problems.append(f"data.prompt.answer must contain {field}, got {self.answer!r}")
        try:
            self.price_format.format(1250.0)
        except (ValueError, IndexError, KeyError) as error:
            problems.append(f"data.prompt.price_format {self.price_format!r} cannot format a float: {error}")
        if problems:
            raise ValueError("\n".join(problems))

    def prompt(self) -> str:
        """The generation prompt (ends with `<|assistant|>\\n`)."""
        return chat_prompt([{"role": "user", "content": self.question}])

    def format_price(self, price: float) -> str:
        return self.price_format.format(float(price))

    def target(self, title: str, category: str, price: float) -> str:
        return self.answer.format(title=title, category=category, price=self.format_price(price))

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


def parse_number(text: str) -> float | None:
    """The first price-like number in `text`: thousands separators and currency signs are ignored."""
    match = _NUMBER.search(text)
    if match is None:
        return None
    value = float(match.group(1).replace(",", "").replace(" ", "") + (match.group(2) or ""))
    return value if math.isfinite(value) else None


def price_from_answer(answer: str) -> float | None:
    """The price in a generated answer, or None when there is none.

    Reads the number after "Full Price:" when present (so a number in the title is not taken),
    else the last number in the text. Handles "1,250.00", "$490", "490 USD", trailing text.
    """
    labels = list(_PRICE_LABEL.finditer(answer))
    if labels:
        label = labels[-1]  # the last "Full Price:" (a title could mention one)
        value = parse_number(answer[label.end() :])
        if value is not None:
            return value
    numbers = list(_NUMBER.finditer(answer))
    return parse_number(numbers[-1].group(0)) if numbers else None


def price_error_pct(predicted: float | None, truth: float) -> float | None:
    """Signed price error in percent, 100 * (predicted - truth) / truth: +10.0 means 10% too high.

    The one definition behind every `price_error_pct` column (training's prediction CSVs, predict's
    output, the demo's gallery) and, as its absolute value, the metrics' APE. None when no price was
    parsed. A true price of 0 (the catalogue never keeps one) gives 0 for an exact 0, else +-infinity.
    """
    if predicted is None:
        return None
    if truth == 0:
        return 0.0 if predicted == 0 else math.copysign(math.inf, predicted)
    return 100.0 * (predicted - truth) / abs(truth)


def _answer_pattern(template: str) -> re.Pattern:
    """A regex with named groups for the template's fields; spacing is matched loosely."""
    escaped = re.escape(template).replace("\\ ", r"\s*")
    pattern = _FIELD.sub(lambda m: f"(?P<{m.group(1)}>.*?)", escaped)
    return re.compile(pattern + r"\s*$", re.DOTALL | re.IGNORECASE)


def _stripped(value: str | None) -> str | None:
    return None if value is None else value.strip()
