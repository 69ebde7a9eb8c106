"""The metrics of one evaluation and the constant baselines they are compared with.

`answer_metrics` scores an evaluation's records by field type (`phi3v.task.scoring.score_answers`: keys
`<field>_<metric>`, e.g. `price_mape`, `make_accuracy`, `year_exact_match`, plus `parse_rate` and `count`) and
adds `loss`, the teacher-forced loss per answer token. Records are gathered from every rank before scoring
(phi3v.training.gathering), so these are plain functions of lists: no metric state is synchronised.
`split_baselines` fits the constant baselines on the training split (every number field's mean or median,
every category field's most common label) and scores them on val and test like the model.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from phi3v.task import FieldValue, TaskSpec
from phi3v.task.scoring import baseline_scores, fit_baselines, score_answers

if TYPE_CHECKING:
    from .evaluation import EvalRecord


def answer_metrics(task: TaskSpec, records: Sequence[EvalRecord]) -> dict[str, float]:
    """The metrics of one evaluation: `score_answers` of its parsed answers against their truth, and `loss`,
    the teacher-forced loss per answer token (NaN without tokens)."""
    answers = [record.answer for record in records]
    values = score_answers(task, [a.truth for a in answers], [a.parsed for a in answers])
    tokens = sum(record.tokens for record in records)
    values["loss"] = math.fsum(record.loss_sum for record in records) / tokens if tokens else math.nan
    return values


def split_baselines(
    task: TaskSpec, truth: Mapping[str, Sequence[Mapping[str, FieldValue]]]
) -> dict[str, dict[str, dict[str, float]]]:
    """{split: {baseline name: metrics}} of val and test, the baselines fitted on train. `truth` holds every
    split's true values, one mapping per product keyed by field name (`ProductDataModule.truth`); an empty
    split is left out."""
    fitted = fit_baselines(task, truth["train"])
    return {split: baseline_scores(task, fitted, truth[split]) for split in ("val", "test") if len(truth[split])}
