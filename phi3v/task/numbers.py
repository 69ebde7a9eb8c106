"""Numbers as catalogues and models write them: reading one from text, and the signed error of one.

`parse_number` reads the first price-like number of a text ("1,250.00", "$490", "490 USD", "1 250",
"85,000 km"); `read_number` the number a label introduces ("Full Price: 490"), else the last one.
Signs are not read: every catalogue number this task scores (prices, years, mileages, areas) is positive.
"""

from __future__ import annotations

import math
import re

# A number as users and models write prices: "1,250.00", "$490", "490 USD", "1 250", "USD1250".
NUMBER = re.compile(r"(?<![\d.])(\d{1,3}(?:[, ]\d{3})+|\d+)(\.\d+)?(?![\d])")
_PRICE_LABEL = re.compile(r"full\s*price\s*[:=]?", re.IGNORECASE)


def parse_number(text: str) -> float | None:
    """The first price-like number in `text`: thousands separators and currency signs are ignored."""
    match = NUMBER.search(text)
    if match is None:
        return None
    value = float(match.group(1).replace(",", "").replace(" ", "") + (match.group(2) or ""))
    return value if math.isfinite(value) else None


def read_number(text: str, label: re.Pattern | None) -> float | None:
    """The number after the last match of `label` in `text` when there is one, else the last number.

    The last label, because a title could mention one ("Full Price: 10 Tote, ..., Full Price: 490");
    the last number when no label is there, because a number in a title comes before the price.
    """
    labels = list(label.finditer(text)) if label is not None else []
    if labels:
        label = labels[-1]  # the last "Full Price:" (a title could mention one)
        value = parse_number(text[label.end() :])
        if value is not None:
            return value
    numbers = list(NUMBER.finditer(text))
    return parse_number(numbers[-1].group(0)) if numbers else None


def price_from_answer(answer: str) -> float | None:
    """The price in a generated answer, or None when there is none.

    Reads the number after "Full Price:" when present (so a number in the title is not taken),
    else the last number in the text. Handles "1,250.00", "$490", "490 USD", trailing text.
    """
    return read_number(answer, _PRICE_LABEL)


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
