"""Tier 2: the prediction row every consumer writes (training's CSVs, predict, the demo's gallery): one
column group per field of the task, a number's signed error, and how rows are written."""

from __future__ import annotations

import csv
import json
import math

import pytest

from phi3v.inference import prediction_columns, prediction_row, write_predictions
from phi3v.task import FieldSpec, TaskSpec, price_error_pct
from phi3v.task.scoring import score_numbers

pytestmark = pytest.mark.unit

SEED = TaskSpec()
CARS = TaskSpec(fields=(FieldSpec("make", type="category"), FieldSpec("year", type="integer"),
                        FieldSpec("mileage", type="number")))
TRUTH = {"title": "A", "category": "B", "price": 200.0}


def test_the_seed_tasks_columns_keep_todays_names_in_a_group_per_field():
    assert prediction_columns(SEED) == (
        "product_id", "image_path", "target", "prediction",
        "parsed_title", "true_title", "title_match", "parsed_category", "true_category", "category_match",
        "parsed_price", "true_price", "price_error_pct",
    )
    assert prediction_columns(CARS)[4:] == (
        "parsed_make", "true_make", "make_match", "parsed_year", "true_year", "year_error_pct",
        "parsed_mileage", "true_mileage", "mileage_error_pct",
    )


def test_a_row_holds_the_answer_its_fields_and_the_signed_error():
    row = prediction_row(SEED, "7", "a.jpg", "Product: A, Category: B, Full Price: 200.0",
                         "Product: a, Category: C, Full Price: 150.0", {"title": "a", "category": "C", "price": 150.0},
                         TRUTH)
    assert row == {
        "product_id": "7", "image_path": "a.jpg", "target": "Product: A, Category: B, Full Price: 200.0",
        "prediction": "Product: a, Category: C, Full Price: 150.0",
        "parsed_title": "a", "true_title": "A", "title_match": True,  # matched as scored: case-folded
        "parsed_category": "C", "true_category": "B", "category_match": False,
        "parsed_price": 150.0, "true_price": 200.0,
        "price_error_pct": -25.0,  # (150 - 200) / 200: an underestimate is negative
    }
    assert list(row) == list(prediction_columns(SEED))
    unparsed = prediction_row(SEED, "7", "a.jpg", "t", "garbage", {"title": None, "category": None, "price": None},
                              TRUTH)
    assert unparsed["parsed_price"] is None and unparsed["price_error_pct"] is None
    assert unparsed["title_match"] is False and unparsed["category_match"] is False


@pytest.mark.parametrize(
    "predicted, truth, signed",
    [(150.0, 200.0, -25.0), (250.0, 200.0, 25.0), (1.1, 1.0, 100 * 0.1 / 1.0), (None, 200.0, None),
     (0.0, 0.0, 0.0), (5.0, 0.0, math.inf), (-5.0, 0.0, -math.inf)],
)
def test_price_error_is_signed_and_the_metrics_use_its_absolute_value(predicted, truth, signed):
    assert price_error_pct(predicted, truth) == (signed if signed is None else pytest.approx(signed))
    if predicted is not None:  # the plain APE of one answer
        assert score_numbers([predicted], [truth])["mape_parsed"] == pytest.approx(abs(signed))


@pytest.mark.parametrize("suffix", [".jsonl", ".csv"])
def test_rows_are_written_by_suffix_and_never_half(tmp_path, suffix):
    columns = prediction_columns(CARS)
    rows = [dict.fromkeys(columns, "x") | {"mileage_error_pct": None, "true_year": 2019, "make_match": True}
            for _ in range(3)]
    out = tmp_path / "sub" / f"p{suffix}"
    assert write_predictions(iter(rows), out, CARS) == 3
    if suffix == ".jsonl":
        read = [json.loads(line) for line in out.read_text().splitlines()]
        assert read == rows
    else:
        read = list(csv.DictReader(out.open()))
        assert len(read) == 3 and list(read[0]) == list(columns) and read[0]["true_year"] == "2019"
        assert (read[0]["mileage_error_pct"], read[0]["make_match"]) == ("", "True")

    def failing():
        yield rows[0]
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        write_predictions(failing(), tmp_path / f"failed{suffix}", CARS)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sub"]  # no file, no temporary left behind
