"""Scatter plots, prediction tables and the end-of-run summary."""

from __future__ import annotations

import math

import pytest
from PIL import Image
from summary_text import field_tables

from phi3v.inference import prediction_row
from phi3v.task import FieldSpec, TaskSpec
from phi3v.task.scoring import summary_keys
from phi3v.training.reporting import (
    SplitResult,
    beats_baselines,
    curve_keys,
    headline_keys,
    number_scatter,
    overall_verdict,
    run_summary,
    split_verdict,
    summary_table,
    summary_tables,
    table_columns,
    try_commands,
    wandb_prediction_table,
)

pytestmark = pytest.mark.unit

SEED = TaskSpec()
SUMMARY_KEYS = ("price_mape", "price_median_ape", "price_within_25pct", "price_spearman", "category_accuracy",
                "title_similarity")  # the seed task's table, as the summary always printed it
CARS = TaskSpec(fields=(FieldSpec("make", type="category"), FieldSpec("year", type="integer"),
                        FieldSpec("mileage", type="number"), FieldSpec("price", type="number")))


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
def test_number_scatter_writes_png(tmp_path, true, predicted):
    target = tmp_path / "plots" / "scatter.png"  # the folder does not exist yet
    assert_png(number_scatter(true, predicted, target, title="val step 10"), target)


def test_number_scatter_rejects_mismatched_lengths(tmp_path):
    with pytest.raises(ValueError, match="2 true values of mileage but 1 predictions"):
        number_scatter([1.0, 2.0], [1.0], tmp_path / "x.png", name="mileage")


def test_number_scatter_names_its_field_on_the_axes(tmp_path, monkeypatch):
    from matplotlib.figure import Figure

    labels = []
    monkeypatch.setattr(Figure, "savefig", lambda figure, *args, **kwargs: labels.append(
        (figure.axes[0].get_xlabel(), figure.axes[0].get_ylabel())))
    number_scatter([2019.0], [2018.0], tmp_path / "year.png", name="year")
    number_scatter([10.0], [12.0], tmp_path / "price.png")
    assert labels == [("true year", "predicted year"), ("true price", "predicted price")]


def rows_fixture(tmp_path):
    image = tmp_path / "a.png"
    Image.new("RGB", (64, 48), "red").save(image)
    return [
        prediction_row(SEED, "1", image, "Product: A, Category: c, Full Price: 200.0",
                       "Product: A, Category: c, Full Price: 150.0", {"title": "A", "category": "c", "price": 150.0},
                       {"title": "A", "category": "c", "price": 200.0}),
        prediction_row(SEED, "2", tmp_path / "missing.jpg", "Product: B, Category: d, Full Price: 50.0", "no idea",
                       {"title": None, "category": None, "price": None},
                       {"title": "B", "category": "d", "price": 50.0}),
    ]


def test_wandb_prediction_table(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "disabled")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    import wandb

    table = wandb_prediction_table(rows_fixture(tmp_path), SEED, thumbnail=32)
    assert table.columns == table_columns(SEED) == [
        "image", "target", "prediction", "parsed_title", "true_title", "title_match", "parsed_category",
        "true_category", "category_match", "parsed_price", "true_price", "price_error_pct"]
    assert len(table.data) == 2
    thumb = table.data[0][0]
    assert isinstance(thumb, wandb.Image)
    assert (thumb._width, thumb._height) == (32, 24)  # 64 x 48 shrunk to fit 32, aspect kept
    assert table.data[1][0] is None  # the missing image file
    assert table.data[0][1:] == ["Product: A, Category: c, Full Price: 200.0",
                                 "Product: A, Category: c, Full Price: 150.0", "A", "A", True, "c", "c", True,
                                 150.0, 200.0, -25.0]
    assert table_columns(CARS)[3:6] == ["parsed_make", "true_make", "make_match"]


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
    # any field's metrics, by their kind: an error lower, an accuracy or exact match higher
    model = {"mileage_median_ape": 9.0, "year_exact_match": 0.4, "make_macro_f1": 0.1, "year_mape_parsed": 30.0}
    baseline = {"mileage_median_ape": 10.0, "year_exact_match": 0.3, "make_macro_f1": 0.2, "year_mape_parsed": 20.0}
    assert beats_baselines(model, {"b": baseline}) == {"mileage_median_ape": True, "year_exact_match": True,
                                                      "make_macro_f1": False, "year_mape_parsed": False}


def test_summary_table():
    table = summary_table(MODEL, BASELINES, ("price_mape", "category_accuracy", "parse_rate", "title_similarity"))
    assert table == "\n".join([
        "metric            | model   | train_mean | train_median | beats baselines?",
        "------------------+---------+------------+--------------+-----------------",
        "price_mape        | 12.5000 | 40.0000    | 10.0000      | no",
        "category_accuracy | 0.8000  | 0.5000     | 0.5000       | yes",
        "parse_rate        | 0.9500  | 1.0000     | 1.0000       | no",
        "title_similarity  | -       | -          | -            | n/a",
    ])


def test_summary_tables_are_one_per_field_named_with_its_type_and_aligned():
    assert summary_tables(MODEL, BASELINES, SEED) == "\n".join([
        "price (number)",
        "metric             | model   | train_mean | train_median | beats baselines?",
        "-------------------+---------+------------+--------------+-----------------",
        "price_mape         | 12.5000 | 40.0000    | 10.0000      | no",
        "price_median_ape   | -       | -          | -            | n/a",
        "price_within_25pct | -       | -          | -            | n/a",
        "price_spearman     | -       | -          | -            | n/a",
        "category (category)",
        "metric             | model   | train_mean | train_median | beats baselines?",
        "-------------------+---------+------------+--------------+-----------------",
        "category_accuracy  | 0.8000  | 0.5000     | 0.5000       | yes",
        "title (text)",
        "metric             | model   | train_mean | train_median | beats baselines?",
        "-------------------+---------+------------+--------------+-----------------",
        "title_similarity   | -       | -          | -            | n/a",
    ])


def test_the_seed_tasks_tables_hold_todays_rows_and_figures():
    """Cut per field, the seed task's tables are the one table it always printed: the same rows in the same
    order, the same cells."""
    one = summary_table(LEARNED, CONSTANTS, summary_keys(SEED)).splitlines()
    tables = summary_tables(LEARNED, CONSTANTS, SEED).splitlines()
    headers = [line for line in tables if " | " not in line and not line.startswith("-")]
    assert headers == ["price (number)", "category (category)", "title (text)"]
    rows = [line for line in tables if " | " in line and not line.startswith("metric ")]
    assert [row.split(" | ")[0].strip() for row in rows] == list(SUMMARY_KEYS)
    assert rows == one[2:] and all(line in (one[0], one[1]) for line in tables if line.startswith(("metric ", "---")))


# A model that beats both baselines on every summary metric, and the baselines of 40 products.
LEARNED = {"price_mape": 20.0, "price_median_ape": 15.0, "price_within_25pct": 0.6, "price_spearman": 0.8,
           "category_accuracy": 0.9, "title_similarity": 0.7, "parse_rate": 1.0, "count": 40.0}
CONSTANT = {"price_mape": 50.0, "price_median_ape": 40.0, "price_within_25pct": 0.3, "price_spearman": 0.0,
            "category_accuracy": 0.125, "title_similarity": 0.0, "parse_rate": 1.0, "count": 40.0}
CONSTANTS = {"train_mean": CONSTANT, "train_median": {**CONSTANT, "price_mape": 19.0}}


def test_split_verdict():
    assert split_verdict(LEARNED, {"train_mean": CONSTANT}, SEED) == (
        True, "beats every baseline (train_mean) on all 6 metrics")
    # the median baseline's MAPE of 19 beats the model's 20: one metric short is a no
    assert split_verdict(LEARNED, CONSTANTS, SEED) == (False, "does NOT beat every baseline on price_mape")
    judged, sentence = split_verdict({**LEARNED, "count": 29.0}, CONSTANTS, SEED)  # MIN_JUDGED is 30
    assert judged is None and sentence.startswith("too little evaluated to judge: 29 answers, 29 with a readable "
                                                  "price (at least 30 needed;")
    assert split_verdict({**LEARNED, "parse_rate": 0.0}, CONSTANTS, SEED)[0] is None  # no price read at all
    assert split_verdict({"count": 20.0, "parse_rate": 0.5}, {}, CARS)[1].startswith(
        "too little evaluated to judge: 20 answers, 10 with a readable year, mileage and price")


def test_run_summary_has_every_split_the_verdict_and_the_commands():
    results = {
        "val": SplitResult(LEARNED, {"train_mean": CONSTANT}, distinct_answers=37, history=[
            {"loss": 0.9, "category_accuracy": 0.25, "price_spearman": -0.1, "price_mape": 50.0},
            {"loss": 0.45, "category_accuracy": 0.8125, "price_spearman": 0.6},
        ]),
        "test": SplitResult({**LEARNED, "price_spearman": 0.75}, CONSTANTS, distinct_answers=35),
    }
    text = run_summary(results, SEED, try_commands("runs/a/adapter", "runs/a/wandb/offline-run-1"))
    blocks = text.split("\n\n")
    assert [block.splitlines()[0] for block in blocks] == [
        "val: 40 answers, parse rate 1.000, 37 distinct",
        "test: 40 answers, parse rate 1.000, 35 distinct",
        "verdict: NOT yet better than every baseline on test; test price rank correlation (Spearman) 0.750",
        "try it:",
    ]
    # the learning curve: each curve_keys figure over the evaluations, in order (other metrics left out)
    assert blocks[0].splitlines()[1] == (
        "per evaluation: loss 0.900 -> 0.450 | category_accuracy 0.250 -> 0.812 | price_spearman -0.100 -> 0.600"
    )
    assert len(blocks[1].splitlines()) == len(blocks[0].splitlines()) - 1  # no history, no curve line
    val_tables = field_tables(blocks[0].splitlines())
    assert list(val_tables) == ["price (number)", "category (category)", "title (text)"]
    assert all(table[0] == ["metric", "model", "train_mean", "beats baselines?"] for table in val_tables.values())
    assert [row[0] for table in val_tables.values() for row in table[1:]] == list(SUMMARY_KEYS)
    assert all(row[-1] == "yes" for table in val_tables.values() for row in table[1:])
    assert blocks[0].splitlines()[2:-1] == summary_tables(LEARNED, {"train_mean": CONSTANT}, SEED).splitlines()
    assert blocks[0].splitlines()[-1] == "val verdict: beats every baseline (train_mean) on all 6 metrics"
    assert blocks[1].splitlines()[-1] == "test verdict: does NOT beat every baseline on price_mape"
    assert blocks[3].splitlines()[1:] == [
        "  python -m phi3v.app adapter=runs/a/adapter  # web demo on http://127.0.0.1:7860",
        "  python -m phi3v.predict adapter=runs/a/adapter image=<photo.jpg>",
        "  python -m phi3v.predict adapter=runs/a/adapter split=test out=test_predictions.csv",
        "  wandb sync runs/a/wandb/offline-run-1  # upload the offline W&B run",
    ]
    both = {split: SplitResult(LEARNED, {"train_mean": CONSTANT}, 40) for split in ("val", "test")}
    assert overall_verdict(both, SEED) == ("verdict: the model learned: it beats every baseline on every metric on val "
                                           "and test; test price rank correlation (Spearman) 0.800")
    assert try_commands(None, None) == [] and "try it" not in run_summary(both, SEED)


@pytest.mark.parametrize(("photos", "image"), [
    (1, "image=<photo.jpg>"), (2, "image=[<photo1>,<photo2>]"), (3, "image=[<photo1>,<photo2>,<photo3>]")])
def test_the_predict_example_names_as_many_photos_as_the_runs_items_have_at_most(photos, image):
    commands = try_commands("runs/a/adapter", None, photos)
    assert commands[1] == f"python -m phi3v.predict adapter=runs/a/adapter {image}"
    assert len(commands) == 3 and commands[0].startswith("python -m phi3v.app adapter=runs/a/adapter")


def test_the_curve_and_the_headline_follow_the_task():
    assert curve_keys(SEED) == ("loss", "category_accuracy", "price_spearman")  # the seed's, as always printed
    assert curve_keys(CARS) == ("loss", "make_accuracy", "year_spearman", "mileage_spearman", "price_spearman")
    texts = TaskSpec(fields=(FieldSpec("artist"), FieldSpec("title")))
    assert curve_keys(texts) == ("loss", "artist_similarity", "title_similarity")  # nothing else to follow
    assert headline_keys(CARS) == ("year_spearman", "mileage_spearman", "price_spearman")
    assert headline_keys(TaskSpec(fields=(FieldSpec("make", type="category"), FieldSpec("t")))) == ("make_accuracy",)
    assert headline_keys(texts) == ("artist_similarity", "title_similarity")


# A car task's split: the model beats the baselines on every row but the year's exact match.
CAR_MODEL = {"year_mape": 0.1, "year_median_ape": 0.05, "year_within_25pct": 1.0, "year_spearman": 0.9,
             "year_exact_match": 0.2, "mileage_mape": 20.0, "mileage_median_ape": 15.0, "mileage_within_25pct": 0.7,
             "mileage_spearman": 0.5, "price_mape": 30.0, "price_median_ape": 25.0, "price_within_25pct": 0.5,
             "price_spearman": 0.6, "make_accuracy": 0.75, "parse_rate": 1.0, "count": 40.0}
CAR_BASELINE = {"year_mape": 0.2, "year_median_ape": 0.1, "year_within_25pct": 1.0, "year_spearman": 0.0,
                "year_exact_match": 0.25, "mileage_mape": 60.0, "mileage_median_ape": 50.0,
                "mileage_within_25pct": 0.2, "mileage_spearman": 0.0, "price_mape": 55.0, "price_median_ape": 45.0,
                "price_within_25pct": 0.25, "price_spearman": 0.0, "make_accuracy": 0.25, "parse_rate": 1.0,
                "count": 40.0}


def test_a_car_summary_has_a_table_per_field_and_names_them():
    history = [{"loss": 1.0, "make_accuracy": 0.5, "year_spearman": 0.1, "mileage_spearman": 0.2,
                "price_spearman": 0.3}]
    text = run_summary({"test": SplitResult(CAR_MODEL, {"train_mean": CAR_BASELINE}, 12, history)}, CARS)
    lines = text.splitlines()
    assert lines[1] == ("per evaluation: loss 1.000 | make_accuracy 0.500 | year_spearman 0.100 | "
                        "mileage_spearman 0.200 | price_spearman 0.300")
    tables = field_tables(lines)  # numbers in task order, then the category
    assert list(tables) == ["year (integer)", "mileage (number)", "price (number)", "make (category)"]
    assert [[row[0] for row in table[1:]] for table in tables.values()] == [
        ["year_mape", "year_median_ape", "year_within_25pct", "year_spearman", "year_exact_match"],
        ["mileage_mape", "mileage_median_ape", "mileage_within_25pct", "mileage_spearman"],
        ["price_mape", "price_median_ape", "price_within_25pct", "price_spearman"], ["make_accuracy"]]
    assert tables["year (integer)"][5] == ["year_exact_match", "0.2000", "0.2500", "no"]
    assert tables["make (category)"][1] == ["make_accuracy", "0.7500", "0.2500", "yes"]
    assert lines[-3] == "test verdict: does NOT beat every baseline on year_within_25pct, year_exact_match"
    assert lines[-1] == ("verdict: NOT yet better than every baseline on test; test year rank correlation (Spearman) "
                         "0.900, mileage rank correlation (Spearman) 0.500, price rank correlation (Spearman) 0.600")
