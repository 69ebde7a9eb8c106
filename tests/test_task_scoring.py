"""Scoring by field type on hand-computed examples; the seed task scores exactly as ProductMetrics did."""

from __future__ import annotations

import math

import pytest

from phi3v.task import FieldSpec, TaskSpec
from phi3v.task.scoring import (
    baseline_scores,
    fit_baselines,
    lower_is_better,
    macro_f1,
    metric_keys,
    numeric_columns,
    prediction_column_names,
    prediction_columns,
    required_fields,
    score_answers,
    summary_keys,
)

pytestmark = pytest.mark.unit

SEED = TaskSpec()
TRUTHS = [
    {"title": "Red Mug", "category": "Phones", "price": 100.0},
    {"title": "Blue Pen", "category": "Laptops", "price": 200.0},
    {"title": "Oak Table", "category": "Home & Kitchen", "price": 400.0},
    {"title": "Desk Lamp", "category": "Toys", "price": 1000.0},
    {"title": "Cable", "category": "Phones", "price": 50.0},
    {"title": "Ball", "category": "Toys", "price": 80.0},
]
ANSWERS = [
    {"title": "red  mug", "category": "phones", "price": 110.0},  # APE 10%; title and category match normalised
    {"title": None, "category": " Laptops ", "price": None},  # price missing: a miss, 100%
    {"title": "Oak Tabla", "category": None, "price": 300.0},  # APE 25%, category missing
    {"title": "Desk", "category": "Games", "price": 1000.0},  # exact price, wrong category
    {"title": "Cable", "category": "Toys", "price": 200.0},  # APE 300%, capped at 100%
    {"title": None, "category": "toys", "price": 88.0},  # APE 10.000000000000009%: within 10%
]
# Parsed prices: 5 of 6, APEs 10, 25, 0, 300, 10 -> errors 10, 100, 0, 150, 8.
# Spearman over the parsed pairs: predicted ranks 2 4 5 3 1, true ranks 3 4 5 1 2, sum d^2 = 6 -> 1 - 36/120.
# Macro-F1 over the true classes: phones 2/3 (tp 1, fn 1), laptops 1, home & kitchen 0, toys 1/2 (tp 1, fp 1, fn 1).
EXPECTED = {
    "title_exact_match": 2 / 6, "title_similarity": (1 + 0 + 8 / 9 + 8 / 13 + 1 + 0) / 6, "title_parse_rate": 4 / 6,
    "category_accuracy": 3 / 6, "category_macro_f1": (2 / 3 + 1 + 0 + 1 / 2) / 4, "category_parse_rate": 5 / 6,
    "price_mae": 268 / 5, "price_mape": (10 + 100 + 25 + 0 + 100 + 10) / 6, "price_mape_parsed": 345 / 5,
    "price_median_ape": 10.0, "price_within_10pct": 3 / 6, "price_within_25pct": 4 / 6, "price_spearman": 0.7,
    "price_parse_rate": 5 / 6, "parse_rate": 5 / 6, "count": 6.0,
}  # fmt: skip
TRAIN = [{"title": t, "category": c, "price": p} for t, c, p in
         [("A", "Toys", 100.0), ("B", "Phones", 200.0), ("C", "Toys", 300.0), ("D", "Phones", 1000.0)]]
# Mean 400, median 250, majority "Toys" (tied with "Phones", seen first).
# train_mean APEs 300 100 0 60 700 400; train_median APEs 150 25 37.5 75 400 212.5.
BASELINE_COMMON = {
    "title_exact_match": 0.0, "title_similarity": 0.0, "title_parse_rate": 0.0, "category_accuracy": 2 / 6,
    "category_macro_f1": 0.5 / 4, "category_parse_rate": 1.0, "price_spearman": 0.0, "price_parse_rate": 1.0,
    "parse_rate": 1.0, "count": 6.0,
}  # fmt: skip
EXPECTED_BASELINES = {
    "train_mean": {**BASELINE_COMMON, "price_mae": 1770 / 6, "price_mape": 460 / 6, "price_mape_parsed": 260.0,
                   "price_median_ape": 200.0, "price_within_10pct": 1 / 6, "price_within_25pct": 1 / 6},
    "train_median": {**BASELINE_COMMON, "price_mae": 245.0, "price_mape": 437.5 / 6, "price_mape_parsed": 150.0,
                     "price_median_ape": 112.5, "price_within_10pct": 0.0, "price_within_25pct": 1 / 6},
}  # fmt: skip


def test_seed_task_hand_computed():
    scores = score_answers(SEED, TRUTHS, ANSWERS)
    assert tuple(scores) == metric_keys(SEED)
    assert scores == pytest.approx(EXPECTED, rel=1e-12)


def test_seed_task_baselines_hand_computed():
    baselines = fit_baselines(SEED, TRAIN)
    assert baselines == {"train_mean": {"title": None, "category": "Toys", "price": 400.0},
                         "train_median": {"title": None, "category": "Toys", "price": 250.0}}
    scores = baseline_scores(SEED, baselines, TRUTHS)
    assert list(scores) == ["train_mean", "train_median"]
    for name, expected in EXPECTED_BASELINES.items():
        assert scores[name] == pytest.approx(expected, rel=1e-12)


# The keys the seed task's evaluation logged before the fields were configurable (ProductMetrics' and the
# price Spearman): every one is still logged under its name, with the value tests/test_metrics.py pins.
SEED_KEYS_BEFORE = ("price_mae", "price_mape", "price_mape_parsed", "price_median_ape", "price_within_10pct",
                    "price_within_25pct", "category_accuracy", "title_exact_match", "title_similarity", "parse_rate",
                    "count", "price_spearman")


def test_the_seed_task_keeps_every_key_it_had():
    keys = metric_keys(SEED)
    assert set(SEED_KEYS_BEFORE) <= set(keys)
    assert set(keys) - set(SEED_KEYS_BEFORE) == {"title_parse_rate", "category_macro_f1", "category_parse_rate",
                                                 "price_parse_rate"}


def test_nothing_seen_is_nan_but_count():
    scores = score_answers(SEED, [], [])
    assert scores["count"] == 0.0
    assert all(math.isnan(value) for key, value in scores.items() if key != "count")


def test_nothing_parsed():
    scores = score_answers(SEED, TRUTHS[:2], [{}, {"title": None, "category": None, "price": None}])
    for key in ("price_mae", "price_mape_parsed", "price_median_ape"):
        assert math.isnan(scores[key])
    assert scores["price_mape"] == 100.0  # every product a miss
    assert math.isnan(scores["price_spearman"])  # fewer than two pairs
    for key in ("price_within_10pct", "parse_rate", "category_accuracy", "category_macro_f1", "title_similarity",
                "title_parse_rate"):
        assert scores[key] == 0.0


def test_mismatched_lengths_raise():
    with pytest.raises(ValueError, match="one truth per answer, got 6 truths, 5 answers"):
        score_answers(SEED, TRUTHS, ANSWERS[:5])


# ---- other types --------------------------------------------------------------------------------------
CARS = TaskSpec(fields=(FieldSpec("make", type="category"), FieldSpec("year", type="integer"),
                        FieldSpec("mileage", type="number")), question="<|image_1|>Which car?")


def test_integer_fields_score_as_numbers_plus_exact_match():
    truths = [{"make": "Audi", "year": 2019, "mileage": 1000.0}, {"make": "BMW", "year": 2010, "mileage": 500.0}]
    answers = [{"make": "audi", "year": 2019, "mileage": None}, {"make": "Audi", "year": 2011, "mileage": 550.0}]
    scores = score_answers(CARS, truths, answers)
    assert tuple(scores) == metric_keys(CARS)
    assert scores["year_exact_match"] == 0.5
    assert scores["year_mae"] == 0.5 and scores["year_mape"] == pytest.approx((0 + 100 / 2010) / 2, rel=1e-12)
    assert scores["make_accuracy"] == 0.5
    assert scores["make_macro_f1"] == pytest.approx((2 / 3 + 0) / 2)  # audi: tp 1, fp 1; bmw: fn 1
    assert scores["mileage_mape"] == pytest.approx((100 + 10) / 2) and scores["mileage_parse_rate"] == 0.5
    assert scores["parse_rate"] == 0.5  # year and mileage both read in one answer of two


def test_integer_baselines_round_half_up():
    train = [{"make": "Audi", "year": 2018, "mileage": 1.0}, {"make": "BMW", "year": 2019, "mileage": 2.0}]
    assert fit_baselines(CARS, train) == {
        "train_mean": {"make": "Audi", "year": 2019, "mileage": 1.5},  # 2018.5 -> 2019
        "train_median": {"make": "Audi", "year": 2019, "mileage": 1.5},
    }
    train.append({"make": "BMW", "year": 2018, "mileage": 3.0})  # mean 2018.33 -> 2018, median 2018
    assert fit_baselines(CARS, train)["train_mean"] == {"make": "BMW", "year": 2018, "mileage": 2.0}
    with pytest.raises(ValueError, match="no value of field 'year'"):
        fit_baselines(CARS, [{"make": "Audi", "year": None, "mileage": 1.0}])


def test_a_task_without_numbers_counts_every_field_in_parse_rate():
    task = TaskSpec(fields=(FieldSpec("artist"), FieldSpec("medium", type="category")), question="<|image_1|>Who?")
    truths = [{"artist": "Monet", "medium": "oil"}] * 2
    scores = score_answers(task, truths, [{"artist": "Monet", "medium": None}, {"artist": "x", "medium": "oil"}])
    assert scores["parse_rate"] == 0.5 and scores["artist_exact_match"] == 0.5 and scores["medium_accuracy"] == 0.5
    assert fit_baselines(task, truths)["train_mean"] == {"artist": None, "medium": "oil"}


def test_macro_f1_edges():
    assert math.isnan(macro_f1([], []))
    assert macro_f1(["a", "a"], ["a", "a"]) == 1.0
    assert macro_f1(["z", None], ["a", "b"]) == 0.0  # a class only answered is not averaged in
    assert macro_f1(["a", "z", "b"], ["a", "b", "b"]) == pytest.approx((1 + 2 / 3) / 2)


# ---- keys, directions, prediction columns -----------------------------------------------------------
def test_summary_keys_are_todays_for_the_seed_task():
    assert summary_keys(SEED) == ("price_mape", "price_median_ape", "price_within_25pct", "price_spearman",
                                  "category_accuracy", "title_similarity")
    assert summary_keys(CARS) == ("year_mape", "year_median_ape", "year_within_25pct", "year_spearman",
                                  "year_exact_match", "mileage_mape", "mileage_median_ape", "mileage_within_25pct",
                                  "mileage_spearman", "make_accuracy")


def test_metric_directions():
    assert all(lower_is_better(k) for k in ("price_mape", "price_mae", "year_median_ape", "price_mape_parsed"))
    higher = ("price_spearman", "category_macro_f1", "parse_rate", "title_similarity", "year_exact_match")
    assert not any(lower_is_better(k) for k in higher)
    assert lower_is_better("loss")  # evaluation's teacher-forced loss, logged beside the metrics
    with pytest.raises(ValueError):
        lower_is_better("count")


def test_the_fields_a_whole_answer_needs_and_the_prediction_columns():
    assert required_fields(SEED) == ("price",) and required_fields(CARS) == ("year", "mileage")
    texts = TaskSpec(fields=(FieldSpec("artist"), FieldSpec("medium", type="category")))
    assert required_fields(texts) == ("artist", "medium")  # no number: every field
    assert prediction_column_names(SEED) == tuple(prediction_columns(SEED, TRUTHS[0], ANSWERS[0]))
    assert prediction_column_names(CARS) == (
        "parsed_make", "true_make", "make_match", "parsed_year", "true_year", "year_error_pct", "parsed_mileage",
        "true_mileage", "mileage_error_pct")
    assert numeric_columns(SEED) == ("parsed_price", "true_price", "price_error_pct")
    assert numeric_columns(CARS) == ("parsed_year", "true_year", "year_error_pct", "parsed_mileage", "true_mileage",
                                     "mileage_error_pct")


def test_prediction_columns_one_group_per_field():
    columns = prediction_columns(SEED, TRUTHS[0], ANSWERS[0])
    assert columns == {
        "parsed_title": "red  mug", "true_title": "Red Mug", "title_match": True,
        "parsed_category": "phones", "true_category": "Phones", "category_match": True,
        "parsed_price": 110.0, "true_price": 100.0, "price_error_pct": pytest.approx(10.0),
    }
    missing = prediction_columns(CARS, {"make": "Audi", "year": 2019, "mileage": 10.0}, {"year": 2018})
    assert missing == {"parsed_make": None, "true_make": "Audi", "make_match": False, "parsed_year": 2018,
                       "true_year": 2019, "year_error_pct": pytest.approx(-100 / 2019), "parsed_mileage": None,
                       "true_mileage": 10.0, "mileage_error_pct": None}
