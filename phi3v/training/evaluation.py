"""What evaluation by generation leaves in a run: one typed record per scored answer, and the one
result the module exposes (every evaluation's metrics, the latest records, the baselines) that the
end-of-run summary, the callbacks and W&B read.

A record holds its product's answer (`phi3v.inference.Answer`: the truth and the parsed values keyed
by field name, not hard-wired attributes) beside what only evaluation has: the sample's index and its
teacher-forced loss. Metric names stay `split/name` (`val/price_mape`) wherever they are logged.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace

from phi3v.inference import Answer

EVAL_SPLITS = ("val", "test")


@dataclass(frozen=True)
class EvalRecord:
    """One scored answer of an evaluation.

    Args:
        index: the sample's index in its split's dataset; records of every rank are put in this order.
        answer: the product, its true fields, the generated answer and its parsed fields.
        loss_sum: the teacher-forced loss summed over the answer's tokens (`tokens` of them).
    """

    index: int
    answer: Answer
    loss_sum: float
    tokens: int


@dataclass(frozen=True)
class SplitResult:
    """What a run says about one evaluated split (the summary's input).

    Args:
        scores: the model's metrics (`phi3v.task.scoring.metric_keys` of the task) of its latest evaluation.
        baselines: {baseline name: its metrics} on the same products.
        distinct_answers: how many different answer strings the model generated (a model that ignores
            the photo repeats a few canned answers).
        history: the metrics (and loss) of each evaluation of this split, in order: the summary prints
            its `CURVE_KEYS` as the learning curve.
    """

    scores: Mapping[str, float]
    baselines: Mapping[str, Mapping[str, float]]
    distinct_answers: int
    history: Sequence[Mapping[str, float]] = field(default_factory=tuple)


@dataclass(frozen=True)
class EvaluationResult:
    """Everything evaluation has produced in a run so far; `added` returns the result after one more.

    Args:
        baselines: {split: {baseline name: metrics}}: constant predictions scored on the same split
            (phi3v.training.metrics.split_baselines), computed once from the data.
        history: {split: the metrics (and loss) of each of its evaluations, in order}.
        records: {split: the records of its latest evaluation, all ranks', in dataset order}.
    """

    baselines: Mapping[str, Mapping[str, Mapping[str, float]]] = field(default_factory=dict)
    history: Mapping[str, tuple[Mapping[str, float], ...]] = field(
        default_factory=lambda: {split: () for split in EVAL_SPLITS})
    records: Mapping[str, tuple[EvalRecord, ...]] = field(default_factory=lambda: {split: () for split in EVAL_SPLITS})

    def added(self, split: str, records: Sequence[EvalRecord], metrics: Mapping[str, float]) -> EvaluationResult:
        """This result after one more evaluation of `split` (its records and metrics, the loss included)."""
        return replace(
            self,
            history={**self.history, split: (*self.history.get(split, ()), dict(metrics))},
            records={**self.records, split: tuple(records)},
        )

    def unscored(self, split: str) -> EvaluationResult:
        """This result after an evaluation of `split` that scored nothing: no metrics, and no records
        (the latest evaluation's are none)."""
        return replace(self, records={**self.records, split: ()})

    @property
    def scores(self) -> dict[str, dict[str, float]]:
        """{split: the metrics of its latest evaluation (no loss)} for every evaluated split."""
        return {split: {key: value for key, value in evaluations[-1].items() if key != "loss"}
                for split, evaluations in self.history.items() if evaluations}

    def splits(self) -> dict[str, SplitResult]:
        """The summary of every evaluated split: its latest scores against its baselines, the distinct
        answers of its latest evaluation, and its learning curve."""
        return {
            split: SplitResult(
                scores, self.baselines.get(split, {}),
                distinct_answers=len({record.answer.prediction for record in self.records.get(split, ())}),
                history=self.history[split],
            )
            for split, scores in self.scores.items()
        }
