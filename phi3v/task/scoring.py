"""Scoring parsed answers field by field, against constant baselines fitted on the training split.

Keys are `<field>_<metric>`, so the seed task (title, category, price) keeps every name it had:

  number    mae (currency units), mape, mape_parsed, median_ape (percent), within_10pct, within_25pct,
            spearman, parse_rate
  integer   the number metrics, plus exact_match (a year is right or wrong; 2018 for 2019 is a 0.05% APE)
  category  accuracy, macro_f1, parse_rate
  text      exact_match, similarity, parse_rate

and for the whole answer `parse_rate` (the share of answers with every numeric field read; every field
when the task has no numeric one) and `count`. A missing value (None) is a miss, per field:

- `mape` (percent), the sweep objective for a number field, is the mean over ALL answers of min(APE, 100%),
  a missing value scoring 100% (`MISS_APE_PCT`), so answering less never scores better, and one wild answer
  cannot outweigh many good ones. `mape_parsed`, `mae` and `median_ape` are over the read values only (plain
  APEs; read them with `parse_rate`), NaN when none was read; `spearman` is over the read pairs.
- `within_10pct` / `within_25pct`: share of ALL answers within 10% / 25% of the truth (inclusive).
- `accuracy` / `exact_match`: share equal to the truth after case-folding and collapsing whitespace.
- `macro_f1`: the mean over the classes of the truth of 2 TP / (2 TP + FP + FN), on normalised labels: a
  class only answered (never true) is no class of its own, its answers are the true classes' misses.
- `similarity`: mean `difflib.SequenceMatcher` ratio of the normalised texts, a missing one scoring 0.

Evaluation records are gathered from every rank before scoring, so these are plain functions of lists
(no torchmetrics states); the F1 and rank correlation are a few lines here because torchmetrics' versions
want integer class indices and tensors, and average over answered-only classes too.

Baselines (`fit_baselines`) are constant answers: every number field the training mean ("train_mean") or
median ("train_median"; an integer field's rounded half up), every category field the most common training
label (first seen among ties), no text. They are scored by `score_answers` like the model.
"""

from __future__ import annotations

import difflib
import math
import statistics
from collections import Counter
from collections.abc import Mapping, Sequence

from .fields import FieldSpec, FieldValue
from .numbers import price_error_pct
from .spec import TaskSpec

# A number field's `mape` counts an APE above this as this, and a missing value as exactly this (a miss, as bad
# as answering 0): "no answer" never scores better than an answer (a 10x over-guess, 900%, would otherwise
# lose to silence), so a run cannot win the sweep by answering less.
MISS_APE_PCT = 100.0
# An APE that equals a threshold up to float rounding counts as within it: 1.1 vs 1.0 is 10.000000000000009%.
_TOLERANCE_PCT = 1e-9

METRICS: dict[str, tuple[str, ...]] = {
    "number": ("mae", "mape", "mape_parsed", "median_ape", "within_10pct", "within_25pct", "spearman", "parse_rate"),
    "integer": ("mae", "mape", "mape_parsed", "median_ape", "within_10pct", "within_25pct", "spearman", "parse_rate",
                "exact_match"),
    "category": ("accuracy", "macro_f1", "parse_rate"),
    "text": ("exact_match", "similarity", "parse_rate"),
}  # fmt: skip
LOWER_IS_BETTER = frozenset({"mae", "mape", "mape_parsed", "median_ape"})  # the rest: higher is better
# The end-of-run summary's rows per type, numbers first: the seed task's are its six rows, in order. No parse
# rate: it is reported above the table, as the constant baselines always give a value no model can beat 1.0.
SUMMARY_METRICS: dict[str, tuple[str, ...]] = {
    "number": ("mape", "median_ape", "within_25pct", "spearman"),
    "integer": ("mape", "median_ape", "within_25pct", "spearman", "exact_match"),
    "category": ("accuracy",),
    "text": ("similarity",),
}
_SUMMARY_GROUP = {"number": 0, "integer": 0, "category": 1, "text": 2}
BASELINES = ("train_mean", "train_median")


def metric_keys(task: TaskSpec) -> tuple[str, ...]:
    """Every key `score_answers` returns for `task`, in its order."""
    return (*(f"{spec.name}_{metric}" for spec in task.fields for metric in METRICS[spec.type]), "parse_rate", "count")


def summary_groups(task: TaskSpec) -> tuple[tuple[FieldSpec, tuple[str, ...]], ...]:
    """The summary's tables: each field with its rows' keys, number and integer fields first, then category,
    then text fields, each in task order."""
    ranked = sorted(task.fields, key=lambda spec: _SUMMARY_GROUP[spec.type])  # stable: task order within a group
    return tuple((spec, tuple(f"{spec.name}_{metric}" for metric in SUMMARY_METRICS[spec.type])) for spec in ranked)


def summary_keys(task: TaskSpec) -> tuple[str, ...]:
    """Every row of the summary's tables, in order (`summary_groups`): the metrics a split's verdict judges."""
    return tuple(key for _, keys in summary_groups(task) for key in keys)


def lower_is_better(key: str) -> bool:
    """Whether a metric key (`price_mape`, or evaluation's `loss`) improves downwards; `count` has no
    direction (ValueError)."""
    if key == "count":
        raise ValueError("count has no direction")
    return key == "loss" or any(key.endswith(f"_{metric}") for metric in LOWER_IS_BETTER)


def required_fields(task: TaskSpec) -> tuple[str, ...]:
    """The fields an answer must state for the whole answer's `parse_rate`: every numeric field (the seed's
    "a readable price"), or every field when the task has none."""
    return tuple(spec.name for spec in task.fields if spec.numeric) or task.names


# ---- scoring ---------------------------------------------------------------------------------------
def score_answers(
    task: TaskSpec, truths: Sequence[Mapping[str, FieldValue]], answers: Sequence[Mapping[str, FieldValue]]
) -> dict[str, float]:
    """Every metric of `metric_keys(task)` for parsed `answers` against `truths` (both keyed by field name)."""
    if len(truths) != len(answers):
        raise ValueError(f"score_answers needs one truth per answer, got {len(truths)} truths, {len(answers)} answers")
    scores: dict[str, float] = {}
    for spec in task.fields:
        true = [truth[spec.name] for truth in truths]
        predicted = [answer.get(spec.name) for answer in answers]
        for metric, value in _SCORERS[spec.type](predicted, true).items():
            scores[f"{spec.name}_{metric}"] = value
    required = required_fields(task)
    complete = sum(all(answer.get(name) is not None for name in required) for answer in answers)
    scores["parse_rate"] = _ratio(complete, len(answers))
    scores["count"] = float(len(answers))
    return scores


def score_numbers(predicted: Sequence[float | None], truth: Sequence[float]) -> dict[str, float]:
    """The number metrics (module docstring) of one field."""
    pairs = [(float(p), float(t)) for p, t in zip(predicted, truth) if p is not None]
    count, parsed = len(truth), len(pairs)
    apes = [abs(price_error_pct(p, t)) for p, t in pairs]
    capped = math.fsum(min(ape, MISS_APE_PCT) for ape in apes)
    return {
        "mae": _ratio(math.fsum(abs(p - t) for p, t in pairs), parsed),
        "mape": _ratio(capped + MISS_APE_PCT * (count - parsed), count),
        "mape_parsed": _ratio(math.fsum(apes), parsed),
        "median_ape": statistics.median(apes) if apes else math.nan,  # mean of the middle two
        "within_10pct": _ratio(sum(ape <= 10 + _TOLERANCE_PCT for ape in apes), count),
        "within_25pct": _ratio(sum(ape <= 25 + _TOLERANCE_PCT for ape in apes), count),
        "spearman": rank_correlation([p for p, _ in pairs], [t for _, t in pairs]),
        "parse_rate": _ratio(parsed, count),
    }


def score_integers(predicted: Sequence[int | None], truth: Sequence[int]) -> dict[str, float]:
    """The number metrics of one integer field, plus the share of answers exactly right."""
    exact = sum(p is not None and p == t for p, t in zip(predicted, truth))
    return {**score_numbers(predicted, truth), "exact_match": _ratio(exact, len(truth))}


def score_categories(predicted: Sequence[str | None], truth: Sequence[str]) -> dict[str, float]:
    """Accuracy, macro-F1 over the true classes, and the share of answers with a label."""
    return {
        "accuracy": _ratio(sum(text_matches(p, t) for p, t in zip(predicted, truth)), len(truth)),
        "macro_f1": macro_f1([normalise_text(p) for p in predicted], [normalise_text(t) for t in truth]),
        "parse_rate": _ratio(sum(p is not None for p in predicted), len(truth)),
    }


def score_texts(predicted: Sequence[str | None], truth: Sequence[str]) -> dict[str, float]:
    """Exact match, mean similarity, and the share of answers with a text."""
    return {
        "exact_match": _ratio(sum(text_matches(p, t) for p, t in zip(predicted, truth)), len(truth)),
        "similarity": _ratio(math.fsum(text_similarity(p, t) for p, t in zip(predicted, truth)), len(truth)),
        "parse_rate": _ratio(sum(p is not None for p in predicted), len(truth)),
    }


_SCORERS = {"number": score_numbers, "integer": score_integers, "category": score_categories, "text": score_texts}


# ---- baselines ---------------------------------------------------------------------------------------
def fit_baselines(task: TaskSpec, train: Sequence[Mapping[str, FieldValue]]) -> dict[str, dict[str, FieldValue]]:
    """The constant answers of `BASELINES` fitted on the training split's true values (module docstring)."""
    answers: dict[str, dict[str, FieldValue]] = {name: {} for name in BASELINES}
    for spec in task.fields:
        values = [row[spec.name] for row in train if row[spec.name] is not None]
        if not values and spec.type != "text":
            raise ValueError(f"fit_baselines: the training split has no value of field {spec.name!r}")
        for name in BASELINES:
            answers[name][spec.name] = _constant(spec, values, name)
    return answers


def _constant(spec: FieldSpec, values: list, baseline: str) -> FieldValue:
    if spec.type == "text":
        return None
    if spec.type == "category":
        return Counter(values).most_common(1)[0][0]  # Counter keeps first-seen order among ties
    numbers = [float(v) for v in values]
    value = statistics.fmean(numbers) if baseline == "train_mean" else float(statistics.median(numbers))
    return math.floor(value + 0.5) if spec.type == "integer" else value


def baseline_scores(
    task: TaskSpec, baselines: Mapping[str, Mapping[str, FieldValue]], truths: Sequence[Mapping[str, FieldValue]]
) -> dict[str, dict[str, float]]:
    """`score_answers` of each constant baseline on one split: {"train_mean": {...}, "train_median": {...}}."""
    return {name: score_answers(task, truths, [answer] * len(truths)) for name, answer in baselines.items()}


# ---- one answer, for prediction tables ------------------------------------------------------------
def prediction_column_names(task: TaskSpec) -> tuple[str, ...]:
    """The columns `prediction_columns` fills, in order."""
    return tuple(name for spec in task.fields
                 for name in (f"parsed_{spec.name}", f"true_{spec.name}", _check_column(spec)))


def numeric_columns(task: TaskSpec) -> tuple[str, ...]:
    """The prediction columns holding numbers: each numeric field's parsed and true values and its error."""
    return tuple(name for spec in task.fields if spec.numeric
                 for name in (f"parsed_{spec.name}", f"true_{spec.name}", f"{spec.name}_error_pct"))


def _check_column(spec: FieldSpec) -> str:
    return f"{spec.name}_error_pct" if spec.numeric else f"{spec.name}_match"


def prediction_columns(task: TaskSpec, truth: Mapping[str, FieldValue], parsed: Mapping[str, FieldValue]) -> dict:
    """One column group per field: `parsed_<f>`, `true_<f>`, then `<f>_error_pct` (signed, numeric fields) or
    `<f>_match` (category and text fields, as scored)."""
    columns = {}
    for spec in task.fields:
        value, true = parsed.get(spec.name), truth[spec.name]
        columns[f"parsed_{spec.name}"], columns[f"true_{spec.name}"] = value, true
        if spec.numeric:
            columns[_check_column(spec)] = price_error_pct(None if value is None else float(value), float(true))
        else:
            columns[_check_column(spec)] = text_matches(value, true)
    return columns


# ---- the measures ------------------------------------------------------------------------------------
def normalise_text(text: str | None) -> str | None:
    """Case-folded, with runs of whitespace collapsed to one space and the ends stripped; None stays None."""
    return None if text is None else " ".join(text.split()).casefold()


def text_matches(predicted: str | None, truth: str) -> bool:
    """Exact match after `normalise_text`; a missing prediction (None) never matches."""
    return predicted is not None and normalise_text(predicted) == normalise_text(truth)


def text_similarity(predicted: str | None, truth: str) -> float:
    """`difflib.SequenceMatcher(None, a, b).ratio()` of the normalised strings, in [0, 1]; None scores 0.

    The ratio is 2 * matched characters / (len(a) + len(b)), e.g. "abcd" vs "abce" -> 2 * 3 / 8 = 0.75.
    """
    if predicted is None:
        return 0.0
    return difflib.SequenceMatcher(None, normalise_text(predicted), normalise_text(truth)).ratio()


def macro_f1(predicted: Sequence[str | None], truth: Sequence[str]) -> float:
    """Mean F1 = 2 TP / (2 TP + FP + FN) over the classes that occur in `truth`; NaN for no truth."""
    classes = sorted(set(truth))
    if not classes:
        return math.nan
    scores = []
    for label in classes:
        tp = sum(p == label and t == label for p, t in zip(predicted, truth))
        fp = sum(p == label and t != label for p, t in zip(predicted, truth))
        fn = sum(t == label and p != label for p, t in zip(predicted, truth))
        scores.append(2 * tp / (2 * tp + fp + fn))  # > 0: the class occurs in the truth
    return math.fsum(scores) / len(scores)


def rank_correlation(predicted: Sequence[float], truth: Sequence[float]) -> float:
    """Spearman's rank correlation: the Pearson correlation of the two sequences' ranks, tied values
    sharing the mean of the ranks they span (so [5, 7, 7, 9] ranks 1, 2.5, 2.5, 4).

    In [-1, 1]; 1 when the predictions order the items exactly as the truth does. NaN with fewer than
    two pairs; 0.0 when either side is constant: a constant prediction (the baselines) ranks nothing.
    """
    if len(predicted) != len(truth):
        raise ValueError(f"rank_correlation needs pairs, got {len(predicted)} predictions and {len(truth)} truths")
    if len(predicted) < 2:
        return math.nan
    x, y = _ranks(predicted), _ranks(truth)
    mean = (len(x) + 1) / 2  # the mean of any ranking of n items, ties included
    covariance = math.fsum((a - mean) * (b - mean) for a, b in zip(x, y))
    spread = math.sqrt(math.fsum((a - mean) ** 2 for a in x) * math.fsum((b - mean) ** 2 for b in y))
    return 0.0 if spread == 0 else covariance / spread


def _ranks(values: Sequence[float]) -> list[float]:
    """1-based ranks, ties getting the mean of the ranks they span."""
    order = sorted(range(len(values)), key=lambda i: values[i])
    ranks = [0.0] * len(values)
    start = 0
    while start < len(order):
        end = start  # [start, end] is one run of equal values
        while end + 1 < len(order) and values[order[end + 1]] == values[order[start]]:
            end += 1
        for i in order[start : end + 1]:
            ranks[i] = (start + end) / 2 + 1
        start = end + 1
    return ranks


def _ratio(numerator: float, denominator: int) -> float:
    return numerator / denominator if denominator else math.nan
