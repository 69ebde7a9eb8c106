"""The seed task's metrics and constant baselines on hand-computed examples, through the scoring by field type
(phi3v.task.scoring) that evaluation uses: the values the torchmetrics `ProductMetrics` of phi3v before
configurable fields gave on the same answers (each literal below was that class's, and still is).
Scoring of every field type: tests/test_task_scoring.py."""

from __future__ import annotations

import math
import random

import pytest

from phi3v.task import TaskSpec
from phi3v.task.scoring import baseline_scores, fit_baselines, rank_correlation, score_answers, text_similarity

pytestmark = pytest.mark.unit

SEED = TaskSpec()
PRICES = [100.0, 200.0, 400.0, 1000.0]
CATEGORIES = ["Phones", "Laptops", "Home & Kitchen", "Toys"]
TITLES = ["Red Mug", "Blue Pen", "Oak Table", "Desk Lamp"]


def answer(title: str | None, category: str | None, price: float | None) -> dict:
    return {"title": title, "category": category, "price": price}


PREDICTIONS = [
    answer("red  mug", "phones", 110.0),  # title and category match after case/space normalisation
    answer(None, " Laptops ", None),  # no title, category matches, price unparsed
    answer("Oak Tabla", None, 300.0),  # one letter off, category missing
    answer("Desk", "Games", 1000.0),  # title prefix, wrong category, exact price
]
# Parsed prices: samples 0, 2, 3. Absolute errors 10, 100, 0; APEs 10%, 25%, 0%.
# "oak tabla" vs "oak table": 8 of 9 characters match -> 2*8/18 = 8/9; "desk" vs "desk lamp" -> 2*4/13 = 8/13.
EXPECTED = {
    "price_mae": 110 / 3,  # (10 + 100 + 0) / 3 parsed
    "price_mape": (10 + 100 + 25 + 0) / 4,  # every sample; the unparsed price scores a miss, 100%
    "price_mape_parsed": 35 / 3,  # (10 + 25 + 0) / 3 parsed, in percent
    "price_median_ape": 10.0,  # median of [0, 10, 25]
    "price_within_10pct": 2 / 4,  # samples 0 (exactly 10%, inclusive) and 3, over all 4 samples
    "price_within_25pct": 3 / 4,  # samples 0, 2 (exactly 25%), 3; the unparsed sample is a miss
    "category_accuracy": 2 / 4,  # samples 0 and 1
    "title_exact_match": 1 / 4,  # sample 0
    "title_similarity": (1 + 0 + 8 / 9 + 8 / 13) / 4,
    "parse_rate": 3 / 4,
    "count": 4.0,
}


def truths(prices=PRICES, categories=CATEGORIES, titles=TITLES) -> list[dict]:
    return [answer(t, c, p) for t, c, p in zip(titles, categories, prices)]


def scores(predictions: list[dict], prices: list[float], categories=None, titles=None) -> dict[str, float]:
    n = len(prices)
    return score_answers(SEED, truths(prices, categories or ["a"] * n, titles or [""] * n), predictions)


def test_hand_computed_example():
    result = score_answers(SEED, truths(), PREDICTIONS)
    assert {key: result[key] for key in EXPECTED} == pytest.approx(EXPECTED, rel=1e-12)


def test_nothing_parsed_gives_nan_price_errors_and_zero_rates():
    result = scores([answer(None, None, None)] * 2, [10.0, 20.0], ["a", "b"], ["x", "y"])
    for key in ("price_mae", "price_mape_parsed", "price_median_ape"):
        assert math.isnan(result[key])
    assert result["price_mape"] == 100.0  # every product a miss
    for key in ("price_within_10pct", "price_within_25pct", "parse_rate", "category_accuracy", "title_similarity"):
        assert result[key] == 0.0
    assert result["count"] == 2


def test_median_of_even_count_and_threshold_rounding():
    # APEs: 1.1 vs 1.0 is 10% (10.000000000000009 in floats, still "within 10%"); 12 vs 10 is 20%.
    result = scores([answer(None, None, 1.1), answer(None, None, 12.0)], [1.0, 10.0])
    assert result["price_median_ape"] == pytest.approx(15.0)  # mean of the middle two, 10 and 20
    assert result["price_within_10pct"] == 0.5
    assert result["price_within_25pct"] == 1.0
    assert result["price_mae"] == pytest.approx((0.1 + 2.0) / 2)


def test_text_similarity_edges():
    assert text_similarity(None, "anything") == 0.0
    assert text_similarity("ABCD", "abce") == 0.75  # 2 * 3 matching characters / 8
    assert text_similarity(" Desk   Lamp ", "desk lamp") == 1.0


def test_baselines_fit_exact():
    train = [answer("t", c, p) for p, c in zip([10.0, 20.0, 30.0, 100.0], ["a", "b", "a", "c"])]
    assert fit_baselines(SEED, train) == {  # median (20+30)/2; the most common category; no title
        "train_mean": answer(None, "a", 40.0), "train_median": answer(None, "a", 25.0)}
    tied = [answer("t", c, 3.0) for c in ["y", "x", "x", "y"]]
    assert fit_baselines(SEED, tied)["train_mean"]["category"] == "y"  # tie: first seen wins
    with pytest.raises(ValueError, match="no value of field 'category'"):
        fit_baselines(SEED, [])


def test_baseline_metrics_exact():
    baselines = {"train_mean": answer(None, "a", 40.0), "train_median": answer(None, "a", 25.0)}
    result = baseline_scores(SEED, baselines, truths([20.0, 50.0], ["a", "b"], ["t1", "t2"]))
    common = {"category_accuracy": 0.5, "title_exact_match": 0.0, "title_similarity": 0.0, "parse_rate": 1.0,
              "count": 2.0, "price_within_10pct": 0.0, "price_spearman": 0.0}  # a constant ranks nothing
    # mean 40: errors 20, 10 -> MAE 15; APEs 100%, 20% -> MAPE = median = 60; only 50 is within 25%
    assert {k: result["train_mean"][k] for k in (*common, "price_mae", "price_mape", "price_mape_parsed",
            "price_median_ape", "price_within_25pct")} == pytest.approx({**common, "price_mae": 15.0,
            "price_mape": 60.0, "price_mape_parsed": 60.0, "price_median_ape": 60.0, "price_within_25pct": 0.5})
    # median 25: errors 5, 25 -> MAE 15; APEs 25%, 50% -> MAPE = median = 37.5; 25% counts as within 25%
    assert {k: result["train_median"][k] for k in (*common, "price_mae", "price_mape", "price_mape_parsed",
            "price_median_ape", "price_within_25pct")} == pytest.approx({**common, "price_mae": 15.0,
            "price_mape": 37.5, "price_mape_parsed": 37.5, "price_median_ape": 37.5, "price_within_25pct": 0.5})


def test_price_mape_caps_each_error_at_a_miss():
    # APEs 300% (a 4x over-guess) and 20%; the third price is unparsed.
    result = scores([answer(None, None, 40.0), answer(None, None, 12.0), answer(None, None, None)], [10.0] * 3)
    assert result["price_mape"] == pytest.approx((100 + 20 + 100) / 3)  # 300% counts as a miss, like no answer
    assert result["price_mape_parsed"] == pytest.approx((300 + 20) / 2)  # plain MAPE of the parsed answers
    assert result["price_median_ape"] == pytest.approx(160.0)


def run_scores(prices: list[float | None], truth: list[float]) -> dict[str, float]:
    return scores([answer(None, None, p) for p in prices], truth)


def test_sweep_objective_cannot_be_won_by_answering_less():
    """The sweep minimises `val/price_mape`: a run that parses fewer prices, with equal or better errors on
    those it parses, must not score better there (it does on the parsed-only figure)."""
    truth = [100.0, 100.0, 100.0, 100.0]
    answers_all = run_scores([110.0, 120.0, 140.0, 400.0], truth)  # APEs 10, 20, 40, 300
    answers_few = run_scores([105.0, 120.0, None, None], truth)  # better on two, silent on the worst two
    assert answers_few["parse_rate"] == 0.5 and answers_all["parse_rate"] == 1.0
    assert answers_few["price_mape_parsed"] < answers_all["price_mape_parsed"]  # 12.5 vs 92.5: fooled
    assert answers_all["price_mape"] == pytest.approx((10 + 20 + 40 + 100) / 4)  # 42.5
    assert answers_few["price_mape"] == pytest.approx((5 + 20 + 100 + 100) / 4)  # 56.25
    assert answers_few["price_mape"] > answers_all["price_mape"] + 10  # worse, by a wide margin


def test_dropping_any_parsed_price_never_lowers_the_objective():
    generator = random.Random(0)
    for _ in range(200):
        truth = [generator.random() * 1000 + 1 for _ in range(6)]
        prices = [t * generator.random() * 12 for t in truth]  # 0x .. 12x the true price
        dropped = generator.randrange(6)
        fewer = [None if i == dropped else p for i, p in enumerate(prices)]
        # equal (up to float rounding) when the dropped answer was already a miss, >= 100%; worse otherwise
        assert run_scores(fewer, truth)["price_mape"] >= run_scores(prices, truth)["price_mape"] - 1e-9


def test_baselines_are_scored_with_the_capped_objective():
    baselines = {"train_mean": answer(None, "a", 40.0), "train_median": answer(None, "a", 25.0)}
    result = baseline_scores(SEED, baselines, truths([10.0], ["a"], ["t"]))  # APEs 300% (mean), 150% (median)
    assert result["train_mean"]["price_mape"] == 100.0 and result["train_mean"]["price_mape_parsed"] == 300.0
    assert result["train_median"]["price_mape"] == 100.0 and result["train_median"]["price_mape_parsed"] == 150.0


def test_rank_correlation_hand_computed():
    # No ties: ranks of the predictions 3 1 2 5 4 vs 1 2 3 4 5, d = 2 -1 -1 1 -1, sum d^2 = 8:
    # 1 - 6 * 8 / (5 * (25 - 1)) = 0.6
    assert rank_correlation([30.0, 10.0, 20.0, 50.0, 40.0], [1.0, 2.0, 3.0, 4.0, 5.0]) == pytest.approx(0.6)
    # A tie shares ranks 2 and 3: x ranks 1 2.5 2.5 4, y ranks 1 3 2 4, both centred on 2.5:
    # cov = 2.25 + 0 + 0 + 2.25 = 4.5, var x = 4.5, var y = 5 -> 4.5 / sqrt(22.5) = 3 / sqrt(10)
    assert rank_correlation([10.0, 20.0, 20.0, 40.0], [1.0, 3.0, 2.0, 4.0]) == pytest.approx(3 / math.sqrt(10))
    # ranks, not values: any increasing function of the truth is a perfect 1, a decreasing one -1
    assert rank_correlation([1.0, 10.0, 1000.0], [5.0, 6.0, 7.0]) == pytest.approx(1.0)
    assert rank_correlation([3.0, 2.0, 1.0], [5.0, 6.0, 7.0]) == pytest.approx(-1.0)


def test_rank_correlation_edges():
    assert rank_correlation([500.0] * 4, [1.0, 2.0, 3.0, 4.0]) == 0.0  # the constant baselines
    assert math.isnan(rank_correlation([1.0], [2.0])) and math.isnan(rank_correlation([], []))
    with pytest.raises(ValueError, match="3 predictions and 2 truths"):
        rank_correlation([1.0, 2.0, 3.0], [1.0, 2.0])
