"""Scatter plots, prediction tables and the end-of-run summary."""

from __future__ import annotations

import math

import pytest
from PIL import Image

from phi3v.inference import prediction_row
from phi3v.task import ParsedAnswer
from phi3v.training.reporting import (
    SUMMARY_KEYS,
    TABLE_COLUMNS,
    SplitResult,
    beats_baselines,
    overall_verdict,
    price_scatter,
    run_summary,
    split_verdict,
    summary_table,
    try_commands,
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
    expected = ["price_mape", "price_median_ape", "price_within_25pct", "price_spearman", "category_accuracy",
                "title_similarity"]
    assert [line.split(" | ")[0].strip() for line in lines[2:]] == expected


# A model that beats both baselines on every summary metric, and the baselines of 40 products.
LEARNED = {"price_mape": 20.0, "price_median_ape": 15.0, "price_within_25pct": 0.6, "price_spearman": 0.8,
           "category_accuracy": 0.9, "title_similarity": 0.7, "parse_rate": 1.0, "count": 40.0}
CONSTANT = {"price_mape": 50.0, "price_median_ape": 40.0, "price_within_25pct": 0.3, "price_spearman": 0.0,
            "category_accuracy": 0.125, "title_similarity": 0.0, "parse_rate": 1.0, "count": 40.0}
CONSTANTS = {"train_mean": CONSTANT, "train_median": {**CONSTANT, "price_mape": 19.0}}


def test_split_verdict():
    assert split_verdict(LEARNED, {"train_mean": CONSTANT}) == (
        True, "beats every baseline (train_mean) on all 6 metrics")
    # the median baseline's MAPE of 19 beats the model's 20: one metric short is a no
    assert split_verdict(LEARNED, CONSTANTS) == (False, "does NOT beat every baseline on price_mape")
    judged, sentence = split_verdict({**LEARNED, "count": 29.0}, CONSTANTS)  # MIN_JUDGED is 30
    assert judged is None and sentence.startswith("too little evaluated to judge: 29 answers, 29 with a readable")
    assert split_verdict({**LEARNED, "parse_rate": 0.0}, CONSTANTS)[0] is None  # no price read at all


def test_run_summary_has_every_split_the_verdict_and_the_commands():
    results = {
        "val": SplitResult(LEARNED, {"train_mean": CONSTANT}, distinct_answers=37, history=[
            {"loss": 0.9, "category_accuracy": 0.25, "price_spearman": -0.1, "price_mape": 50.0},
            {"loss": 0.45, "category_accuracy": 0.8125, "price_spearman": 0.6},
        ]),
        "test": SplitResult({**LEARNED, "price_spearman": 0.75}, CONSTANTS, distinct_answers=35),
    }
    text = run_summary(results, try_commands("runs/a/adapter", "runs/a/wandb/offline-run-1"))
    blocks = text.split("\n\n")
    assert [block.splitlines()[0] for block in blocks] == [
        "val: 40 answers, parse rate 1.000, 37 distinct",
        "test: 40 answers, parse rate 1.000, 35 distinct",
        "verdict: NOT yet better than every baseline on test; test price rank correlation (Spearman) 0.750",
        "try it:",
    ]
    # the learning curve: each CURVE_KEYS figure over the evaluations, in order (other metrics left out)
    assert blocks[0].splitlines()[1] == (
        "per evaluation: loss 0.900 -> 0.450 | category_accuracy 0.250 -> 0.812 | price_spearman -0.100 -> 0.600"
    )
    assert len(blocks[1].splitlines()) == len(blocks[0].splitlines()) - 1  # no history, no curve line
    val_table = blocks[0].splitlines()[2:-1]
    assert val_table[0].split(" | ") == ["metric            ", "model  ", "train_mean", "beats baselines?"]
    assert [line.split(" | ")[0].strip() for line in val_table[2:]] == list(SUMMARY_KEYS)
    assert all(line.endswith("| yes") for line in val_table[2:])
    assert blocks[0].splitlines()[-1] == "val verdict: beats every baseline (train_mean) on all 6 metrics"
    assert blocks[1].splitlines()[-1] == "test verdict: does NOT beat every baseline on price_mape"
    assert blocks[3].splitlines()[1:] == [
        "  python -m phi3v.app adapter=runs/a/adapter  # web demo on http://127.0.0.1:7860",
        "  python -m phi3v.predict adapter=runs/a/adapter image=<photo.jpg>",
        "  python -m phi3v.predict adapter=runs/a/adapter split=test out=test_predictions.csv",
        "  wandb sync runs/a/wandb/offline-run-1  # upload the offline W&B run",
    ]
    both = {split: SplitResult(LEARNED, {"train_mean": CONSTANT}, 40) for split in ("val", "test")}
    assert overall_verdict(both) == ("verdict: the model learned: it beats every baseline on every metric on val "
                                     "and test; test price rank correlation (Spearman) 0.800")
    assert try_commands(None, None) == [] and "try it" not in run_summary(both)
