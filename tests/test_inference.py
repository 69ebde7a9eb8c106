"""Tier 2: the prediction row every consumer writes (training's CSVs, predict, the demo's gallery), its
signed price error, and how rows are written."""

from __future__ import annotations

import csv
import json
import math

import pytest

from phi3v.inference import COLUMNS, prediction_row, write_predictions
from phi3v.task import ParsedAnswer, price_error_pct
from phi3v.training.metrics import absolute_percentage_error

pytestmark = pytest.mark.unit


def test_a_row_holds_the_answer_its_fields_and_the_signed_error():
    row = prediction_row("7", "a.jpg", "Product: A, Category: B, Full Price: 200.0",
                         "Product: A, Category: B, Full Price: 150.0", ParsedAnswer("A", "B", 150.0), 200)
    assert row == {
        "product_id": "7", "image_path": "a.jpg", "target": "Product: A, Category: B, Full Price: 200.0",
        "prediction": "Product: A, Category: B, Full Price: 150.0", "parsed_title": "A", "parsed_category": "B",
        "parsed_price": 150.0, "true_price": 200.0,
        "price_error_pct": -25.0,  # (150 - 200) / 200: an underestimate is negative
    }
    assert list(row) == list(COLUMNS)
    unparsed = prediction_row("7", "a.jpg", "t", "garbage", ParsedAnswer(None, None, None), 200.0)
    assert unparsed["parsed_price"] is None and unparsed["price_error_pct"] is None


@pytest.mark.parametrize(
    "predicted, truth, signed",
    [(150.0, 200.0, -25.0), (250.0, 200.0, 25.0), (1.1, 1.0, 100 * 0.1 / 1.0), (None, 200.0, None),
     (0.0, 0.0, 0.0), (5.0, 0.0, math.inf), (-5.0, 0.0, -math.inf)],
)
def test_price_error_is_signed_and_the_metrics_use_its_absolute_value(predicted, truth, signed):
    assert price_error_pct(predicted, truth) == (signed if signed is None else pytest.approx(signed))
    if predicted is not None:
        assert absolute_percentage_error(predicted, truth) == pytest.approx(abs(signed))


@pytest.mark.parametrize("suffix", [".jsonl", ".csv"])
def test_rows_are_written_by_suffix_and_never_half(tmp_path, suffix):
    rows = [dict.fromkeys(COLUMNS, "x") | {"price_error_pct": None, "true_price": 1.5} for _ in range(3)]
    out = tmp_path / "sub" / f"p{suffix}"
    assert write_predictions(iter(rows), out) == 3
    if suffix == ".jsonl":
        read = [json.loads(line) for line in out.read_text().splitlines()]
        assert read == rows
    else:
        read = list(csv.DictReader(out.open()))
        assert len(read) == 3 and list(read[0]) == list(COLUMNS) and read[0]["true_price"] == "1.5"
        assert read[0]["price_error_pct"] == ""

    def failing():
        yield rows[0]
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        write_predictions(failing(), tmp_path / f"failed{suffix}")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sub"]  # no file, no temporary left behind
