"""Tier 2: the typed evaluation records and the one result the module exposes (phi3v.training.evaluation),
the answers built from a collated batch (phi3v.inference.answered) and the metrics of one evaluation."""

from __future__ import annotations

import math

import pytest

from phi3v.inference import Answer, answered, photo_paths, prediction_row
from phi3v.task import FieldSpec, TaskSpec
from phi3v.training.evaluation import EvalRecord, EvaluationResult, SplitResult
from phi3v.training.metrics import answer_metrics, split_baselines

pytestmark = pytest.mark.unit

TASK = TaskSpec()


def record(index: int, prediction: str, truth: tuple[str, str, float], loss_sum: float = 1.0, tokens: int = 2):
    values = dict(zip(TASK.names, truth))
    answer = Answer(f"p{index}", (f"{index}.jpg", f"{index}b.jpg"), TASK.answer_for(values), prediction,
                    TASK.parse(prediction), values)
    return EvalRecord(index, answer, loss_sum, tokens)


RECORDS = [
    record(0, "Product: Scarf, Category: Scarves, Full Price: 110.0", ("Scarf", "Scarves", 100.0), 3.0, 4),
    record(1, "Product: Coat, Category: Bags, Full Price: 150.0", ("Coat", "Coats", 200.0), 1.0, 2),
    record(2, "no idea", ("Belt", "Belts", 50.0), 0.5, 2),
]


def test_a_records_answer_row_is_the_prediction_row_of_its_photos_and_its_fields():
    answer = RECORDS[1].answer
    parsed = {"title": "Coat", "category": "Bags", "price": 150.0}
    assert answer.parsed == parsed
    assert answer.row(TASK) == prediction_row(TASK, "p1", "1.jpg;1b.jpg", answer.target, answer.prediction, parsed,
                                              {"title": "Coat", "category": "Coats", "price": 200.0})
    assert answer.row(TASK) == {
        "product_id": "p1", "image_path": "1.jpg;1b.jpg", "target": "Product: Coat, Category: Coats, Full Price: 200.0",
        "prediction": "Product: Coat, Category: Bags, Full Price: 150.0",
        "parsed_title": "Coat", "true_title": "Coat", "title_match": True,
        "parsed_category": "Bags", "true_category": "Coats", "category_match": False,
        "parsed_price": 150.0, "true_price": 200.0, "price_error_pct": -25.0,
    }
    assert photo_paths(answer.row(TASK)) == ["1.jpg", "1b.jpg"]
    one = Answer("p9", ("data/9.jpg",), answer.target, answer.prediction, answer.parsed, answer.truth)
    assert one.row(TASK)["image_path"] == "data/9.jpg" and photo_paths(one.row(TASK)) == ["data/9.jpg"]  # as always


def test_answered_keeps_the_supervised_rows_with_their_truth_and_parsed_fields():
    meta = {"supervised": [True, False, True], "product_id": ["a", "b", "c"],
            "image_paths": [("a.jpg",), ("b.jpg",), ("c.jpg", "c-back.jpg")],
            "target": ["ta", "tb", "tc"],
            "truth": [{"title": "A", "category": "X", "price": 1.0}, {"title": "B", "category": "Y", "price": 2.0},
                      {"title": "C", "category": "Z", "price": 3.0}]}
    predictions = ["Product: A, Category: X, Full Price: 1.5", "skipped", "Full Price: 7"]
    got = answered(meta, predictions, TASK)
    assert [i for i, _ in got] == [0, 2]  # row 1 is an unreadable image or a padding repeat
    assert got[0][1] == Answer("a", ("a.jpg",), "ta", predictions[0], {"title": "A", "category": "X", "price": 1.5},
                               {"title": "A", "category": "X", "price": 1.0})
    assert got[1][1].parsed == {"title": None, "category": None, "price": 7.0} and got[1][1].truth["price"] == 3.0
    assert got[1][1].image_paths == ("c.jpg", "c-back.jpg")  # every photo of the product


def test_answer_metrics_score_the_parsed_fields_the_price_rank_and_the_token_mean_loss():
    values = answer_metrics(TASK, RECORDS)
    assert values["count"] == 3 and values["parse_rate"] == pytest.approx(2 / 3)
    assert values["price_mape_parsed"] == pytest.approx((10 + 25) / 2)  # 110 vs 100, 150 vs 200
    assert values["price_mape"] == pytest.approx((10 + 25 + 100) / 3)  # the unparsed answer counts 100%
    assert values["category_accuracy"] == pytest.approx(1 / 3) and values["title_exact_match"] == pytest.approx(2 / 3)
    assert values["price_spearman"] == 1.0  # the two parsed prices are in the true order
    assert values["loss"] == pytest.approx((3.0 + 1.0 + 0.5) / (4 + 2 + 2))
    assert list(values)[-3:] == ["parse_rate", "count", "loss"]  # after every field's metrics
    assert math.isnan(answer_metrics(TASK, [record(0, "x", ("A", "B", 1.0), 0.0, 0)])["loss"])  # no answer tokens


CARS = TaskSpec(fields=(FieldSpec("make", type="category"), FieldSpec("year", type="integer")))


def test_answer_metrics_of_another_task_are_keyed_by_its_fields():
    truth = {"make": "Audi", "year": 2019}
    answer = Answer("c1", ("c1.jpg",), CARS.answer_for(truth), "Make: audi, Year: 2018", {"make": "audi", "year": 2018},
                    truth)
    values = answer_metrics(CARS, [EvalRecord(0, answer, 2.0, 4)])
    assert (values["make_accuracy"], values["year_exact_match"], values["loss"]) == (1.0, 0.0, 0.5)
    assert values["year_mape"] == pytest.approx(100 / 2019)
    assert not any(key.startswith(("price", "title", "category")) for key in values)


def test_split_baselines_fit_on_train_and_score_val_and_test():
    truth = {"train": [{"make": "Audi", "year": 2010}, {"make": "BMW", "year": 2013}, {"make": "Audi", "year": 2020}],
             "val": [{"make": "BMW", "year": 2015}], "test": []}
    baselines = split_baselines(CARS, truth)
    assert list(baselines) == ["val"]  # an empty split is left out
    # mean year 2014.33 -> 2014, median 2013; the majority make Audi
    assert baselines["val"]["train_mean"]["year_mae"] == 1.0 and baselines["val"]["train_median"]["year_mae"] == 2.0
    assert baselines["val"]["train_mean"]["make_accuracy"] == 0.0


def test_the_result_keeps_every_evaluations_metrics_and_the_latest_records():
    baselines = {"val": {"train_mean": {"price_mape": 50.0}}, "test": {"train_mean": {"price_mape": 40.0}}}
    start = EvaluationResult(baselines=baselines)
    assert start.scores == {} and start.splits() == {} and start.records == {"val": (), "test": ()}
    first = start.added("val", RECORDS[:2], {"price_mape": 30.0, "loss": 2.0})
    second = first.added("val", RECORDS, {"price_mape": 20.0, "loss": 1.0})
    assert start.history == {"val": (), "test": ()}  # frozen: `added` returns a new result
    assert second.history["val"] == ({"price_mape": 30.0, "loss": 2.0}, {"price_mape": 20.0, "loss": 1.0})
    assert second.records["val"] == tuple(RECORDS) and second.scores == {"val": {"price_mape": 20.0}}
    assert second.splits() == {"val": SplitResult({"price_mape": 20.0}, baselines["val"], distinct_answers=3,
                                                  history=second.history["val"])}
    tested = second.added("test", [RECORDS[0], RECORDS[0]], {"price_mape": 10.0, "loss": 0.5})
    assert list(tested.splits()) == ["val", "test"] and tested.splits()["test"].distinct_answers == 1
    assert tested.splits()["test"].baselines == baselines["test"]
    empty = tested.unscored("val")  # an evaluation that scored nothing: no stale records, the history stays
    assert empty.records["val"] == () and empty.history == tested.history and empty.scores == tested.scores
