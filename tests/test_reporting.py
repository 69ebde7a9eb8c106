"""Scatter plots, prediction tables and the end-of-run summary."""

from __future__ import annotations

import math

import pytest
from PIL import Image

from phi3v.inference import prediction_row
from phi3v.task import ParsedAnswer
from phi3v.training.reporting import (
    TABLE_COLUMNS,
    beats_baselines,
    price_scatter,
    summary_table,
    wandb_prediction_table,
)

pytestmark = pytest.mark.unit


def assert_png(path, expected_path) -> None:
    assert path == expected_path
    with Image.open(path) as image:
        assert image.format == "PNG"
        assert image.size == (600, 600)  # figsize 6 x 6 inches at 100 dpi


@pytest.mark.parametrize(
    "true, predicted",
    [
        ([100.0, 250.0, 999.0, 12.5], [110.0, 200.0, 1500.0, 12.0]),  # normal data
        ([100.0, 250.0, 999.0], [None, 260.0, None]),  # unparsed predictions
        ([42.0], [40.0]),  # a single point
        ([], []),  # nothing: the PNG says "no predictions"
        ([10.0, 20.0], [None, None]),  # nothing parsed: "no plottable predictions"
        ([10.0, 20.0], [0.0, 25.0]),  # a zero prediction has no place on a log axis
    ],
)
def test_price_scatter_writes_png(tmp_path, true, predicted):
    target = tmp_path / "plots" / "scatter.png"  # the folder does not exist yet
    assert_png(price_scatter(true, predicted, target, title="val step 10"), target)


def test_price_scatter_rejects_mismatched_lengths(tmp_path):
    with pytest.raises(ValueError, match="2 true prices but 1 predictions"):
        price_scatter([1.0, 2.0], [1.0], tmp_path / "x.png")


def rows_fixture(tmp_path):
    image = tmp_path / "a.png"
    Image.new("RGB", (64, 48), "red").save(image)
    return [
        prediction_row("1", image, "Product: A, Category: c, Full Price: 200.0",
                       "Product: A, Category: c, Full Price: 150.0", ParsedAnswer("A", "c", 150.0), 200.0),
        prediction_row("2", tmp_path / "missing.jpg", "Product: B, Category: d, Full Price: 50.0", "no idea",
                       ParsedAnswer(None, None, None), 50.0),
    ]


def test_wandb_prediction_table(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "disabled")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    import wandb

    table = wandb_prediction_table(rows_fixture(tmp_path), thumbnail=32)
    assert table.columns == TABLE_COLUMNS
    assert len(table.data) == 2
    thumb = table.data[0][0]
    assert isinstance(thumb, wandb.Image)
    assert (thumb._width, thumb._height) == (32, 24)  # 64 x 48 shrunk to fit 32, aspect kept
    assert table.data[1][0] is None  # the missing image file
    assert table.data[0][1:] == ["Product: A, Category: c, Full Price: 200.0",
                                 "Product: A, Category: c, Full Price: 150.0", 150.0, 200.0, -25.0]


MODEL = {"price_mape": 12.5, "category_accuracy": 0.8, "parse_rate": 0.95, "count": 10.0}
BASELINES = {
    "train_mean": {"price_mape": 40.0, "category_accuracy": 0.5, "parse_rate": 1.0, "count": 10.0},
    "train_median": {"price_mape": 10.0, "category_accuracy": 0.5, "parse_rate": 1.0, "count": 10.0},
}


def test_beats_baselines():
    # MAPE 12.5 beats 40 but not 10 (lower is better); accuracy 0.8 beats both 0.5; parse rate 0.95 < 1.
    # `count` has no direction and is left out.
    assert beats_baselines(MODEL, BASELINES) == {"price_mape": False, "category_accuracy": True, "parse_rate": False}
    assert beats_baselines({"price_mae": 5.0}, {"b": {"price_mae": 6.0}}) == {"price_mae": True}
    assert beats_baselines({"price_mae": 6.0}, {"b": {"price_mae": 6.0}}) == {"price_mae": False}  # a tie
    assert beats_baselines({"price_mape": math.nan}, {"b": {"price_mape": 50.0}}) == {"price_mape": False}


def test_summary_table():
    table = summary_table(MODEL, BASELINES, keys=("price_mape", "category_accuracy", "parse_rate", "title_similarity"))
    assert table == "\n".join([
        "metric            | model   | train_mean | train_median | beats baselines?",
        "------------------+---------+------------+--------------+-----------------",
        "price_mape        | 12.5000 | 40.0000    | 10.0000      | no",
        "category_accuracy | 0.8000  | 0.5000     | 0.5000       | yes",
        "parse_rate        | 0.9500  | 1.0000     | 1.0000       | no",
        "title_similarity  | -       | -          | -            | n/a",
    ])


def test_summary_table_default_keys():
    lines = summary_table(MODEL, BASELINES).splitlines()
    expected = ["price_mape", "price_median_ape", "price_within_25pct", "category_accuracy", "title_similarity",
                "parse_rate"]
    assert [line.split(" | ")[0].strip() for line in lines[2:]] == expected
