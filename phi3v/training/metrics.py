"""Evaluation metrics for generated product answers, and the constant-prediction baselines they must beat.

`ProductMetrics` accumulates, over an evaluation epoch, how well parsed answers
(`phi3v.task.ParsedAnswer`) match the catalogue's price, category and title. Strings cannot be
synchronised across DDP ranks, so they are compared in `update` and only numbers are stored, as tensor
states that torchmetrics sums (`dist_reduce_fx="sum"`) or concatenates (`"cat"`) over ranks.

`answer_metrics` scores one evaluation's records (those metrics, the price rank correlation and the loss).
`Baselines` are the trivial models fitted on the training split (predict the mean or median training price
and the most common training category); `baseline_metrics` scores them with the same metric.
"""

from __future__ import annotations

import difflib
import math
import statistics
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torchmetrics
from torchmetrics.utilities import dim_zero_cat

from phi3v.task import ParsedAnswer, price_error_pct

if TYPE_CHECKING:
    from .evaluation import EvalRecord

METRIC_KEYS = (
    "price_mae",
    "price_mape",
    "price_mape_parsed",
    "price_median_ape",
    "price_within_10pct",
    "price_within_25pct",
    "category_accuracy",
    "title_exact_match",
    "title_similarity",
    "parse_rate",
    "count",
)

# `price_mape` (the sweep objective and best.ckpt's monitor) scores every product: an APE above this counts as
# this, and an unparsed price counts as exactly this (a miss, as bad as answering 0). Capping keeps "no answer"
# from ever scoring better than any answer (a 10x over-guess, 900%, would otherwise lose to silence), so a run
# cannot win the sweep by answering less; it also stops one wild answer from outweighing many good ones.
# `price_mape_parsed` keeps the plain, uncapped MAPE of the parsed answers.
MISS_APE_PCT = 100.0

# An APE that equals a threshold up to float rounding counts as within it: 1.1 vs 1.0 is 10.000000000000009%.
_TOLERANCE_PCT = 1e-9

# Sum states and what each accumulates; all float64 so that sums of prices and counts stay exact.
_SUM_STATES = (
    "count",  # samples seen
    "parsed",  # samples with a parsed price
    "abs_error_sum",  # sum of |predicted - true| over parsed samples, currency units
    "ape_sum",  # sum of absolute percentage errors over parsed samples, in percent
    "capped_ape_sum",  # sum of min(APE, MISS_APE_PCT) over parsed samples, in percent
    "within_10",  # samples (of all) whose APE <= 10%
    "within_25",  # samples (of all) whose APE <= 25%
    "category_correct",
    "title_correct",
    "title_similarity_sum",
)


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


def absolute_percentage_error(predicted: float, truth: float) -> float:
    """|predicted - truth| / |truth| in percent: the absolute value of `phi3v.task.price_error_pct`
    (the prediction CSVs' column). A true price of 0 gives 0 for an exact 0, else infinity."""
    return abs(price_error_pct(predicted, truth))


class ProductMetrics(torchmetrics.Metric):
    """Accumulates per-sample results over an evaluation epoch; DDP-safe (tensor states, dist_reduce_fx sum/cat).

    `compute()` returns 0-d float64 tensors (NaN everywhere but `count` = 0 when nothing was seen):

    - `parse_rate`: share of samples whose answer had a parsed price (`ParsedAnswer.price is not None`).
    - `price_mape` (percent: 12.5 means 12.5%), the sweep objective: the mean over ALL samples of
      min(APE, 100%), an unparsed price scoring 100% (`MISS_APE_PCT`), so answering less never scores better.
    - `price_mape_parsed`, `price_mae` (currency units) and `price_median_ape` (percent) are over the parsed
      samples only (plain, uncapped APEs), so read them together with `parse_rate`; NaN when no price was parsed.
    - `price_within_10pct` / `price_within_25pct`: share (0..1) of ALL samples whose predicted price is within
      10% / 25% of the true price (inclusive); an unparsed price counts as a miss.
    - `category_accuracy` / `title_exact_match`: share of samples equal to the truth after case-folding and
      whitespace normalisation; a missing (None) field counts as wrong.
    - `title_similarity`: mean `difflib.SequenceMatcher` ratio (in [0, 1]) of the normalised titles, None -> 0.
    - `count`: samples seen.
    """

    full_state_update = False
    is_differentiable = False
    higher_is_better = None  # mixed: lower for the price errors, higher for the rest

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        for name in _SUM_STATES:
            self.add_state(name, default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        # Per-sample APEs of parsed samples, needed for the median. Stored in `self.dtype` (float32 by default):
        # under DDP, torchmetrics pads a rank that saw no data with an empty tensor of `self.dtype`, and all
        # ranks must gather the same dtype.
        self.add_state("apes", default=[], dist_reduce_fx="cat")

    def update(
        self,
        predictions: Sequence[ParsedAnswer],
        prices: torch.Tensor | Sequence[float],
        categories: Sequence[str],
        titles: Sequence[str],
    ) -> None:
        """Score one batch: `predictions[i]` against the true `prices[i]`, `categories[i]`, `titles[i]`."""
        true_prices = _as_floats(prices)
        lengths = {len(predictions), len(true_prices), len(categories), len(titles)}
        if len(lengths) != 1:
            raise ValueError(
                f"ProductMetrics.update needs one entry per sample, got {len(predictions)} predictions, "
                f"{len(true_prices)} prices, {len(categories)} categories and {len(titles)} titles"
            )
        apes = [absolute_percentage_error(p.price, t) for p, t in zip(predictions, true_prices) if p.price is not None]
        errors = [abs(p.price - t) for p, t in zip(predictions, true_prices) if p.price is not None]
        increments = {
            "count": len(predictions),
            "parsed": len(apes),
            "abs_error_sum": math.fsum(errors),
            "ape_sum": math.fsum(apes),
            "capped_ape_sum": math.fsum(min(ape, MISS_APE_PCT) for ape in apes),
            "within_10": sum(ape <= 10 + _TOLERANCE_PCT for ape in apes),
            "within_25": sum(ape <= 25 + _TOLERANCE_PCT for ape in apes),
            "category_correct": sum(text_matches(p.category, c) for p, c in zip(predictions, categories)),
            "title_correct": sum(text_matches(p.title, t) for p, t in zip(predictions, titles)),
            "title_similarity_sum": math.fsum(text_similarity(p.title, t) for p, t in zip(predictions, titles)),
        }
        for name, value in increments.items():
            setattr(self, name, getattr(self, name) + value)
        self.apes.append(torch.tensor(apes, dtype=self.dtype, device=self.device))

    def compute(self) -> dict[str, torch.Tensor]:
        """The metrics described in the class docstring, keyed as in `METRIC_KEYS`."""
        count, parsed = self.count, self.parsed
        apes = self._all_apes()
        median = torch.quantile(apes, 0.5) if apes.numel() else _nan_like(count)  # mean of the middle two
        return {
            "price_mae": _ratio(self.abs_error_sum, parsed),
            "price_mape": _ratio(self.capped_ape_sum + MISS_APE_PCT * (count - parsed), count),
            "price_mape_parsed": _ratio(self.ape_sum, parsed),
            "price_median_ape": median,
            "price_within_10pct": _ratio(self.within_10, count),
            "price_within_25pct": _ratio(self.within_25, count),
            "category_accuracy": _ratio(self.category_correct, count),
            "title_exact_match": _ratio(self.title_correct, count),
            "title_similarity": _ratio(self.title_similarity_sum, count),
            "parse_rate": _ratio(parsed, count),
            "count": count.clone(),
        }

    def _all_apes(self) -> torch.Tensor:
        """The per-sample APEs as one float64 tensor (a list before DDP sync, already a tensor after it)."""
        if isinstance(self.apes, list) and not self.apes:
            return torch.empty(0, dtype=torch.float64, device=self.count.device)
        return dim_zero_cat(self.apes).to(torch.float64)


def answer_metrics(records: Sequence[EvalRecord]) -> dict[str, float]:
    """The metrics of one evaluation: `ProductMetrics` of its parsed answers, `price_spearman` over the
    answers with a parsed price, and `loss`, the teacher-forced loss per answer token (NaN without tokens)."""
    answers = [record.answer for record in records]
    metric = ProductMetrics(sync_on_compute=False)  # the records are already those of every rank
    truth = {name: [a.truth[name] for a in answers] for name in ("price", "category", "title")}
    metric.update([a.parsed for a in answers], truth["price"], truth["category"], truth["title"])
    values = {key: float(value) for key, value in metric.compute().items()}
    priced = [a for a in answers if a.parsed.price is not None]  # rank correlation over parsed prices
    values["price_spearman"] = rank_correlation([a.parsed.price for a in priced], [a.truth["price"] for a in priced])
    tokens = sum(record.tokens for record in records)
    values["loss"] = math.fsum(record.loss_sum for record in records) / tokens if tokens else math.nan
    return values


def rank_correlation(predicted: Sequence[float], truth: Sequence[float]) -> float:
    """Spearman's rank correlation: the Pearson correlation of the two sequences' ranks, tied values
    sharing the mean of the ranks they span (so [5, 7, 7, 9] ranks 1, 2.5, 2.5, 4).

    In [-1, 1]; 1 when the predictions order the products exactly as their true prices do. NaN with
    fewer than two pairs; 0.0 when either side is constant: a constant prediction (the baselines)
    ranks nothing.
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


def _nan_like(reference: torch.Tensor) -> torch.Tensor:
    return torch.full_like(reference, math.nan, dtype=torch.float64)


def _ratio(numerator: torch.Tensor, denominator: torch.Tensor) -> torch.Tensor:
    """numerator / denominator, NaN when the denominator is 0 (no host sync: torch.where, not `if`)."""
    return torch.where(denominator > 0, numerator / denominator, _nan_like(denominator))


def _as_floats(prices: torch.Tensor | Sequence[float]) -> list[float]:
    if isinstance(prices, torch.Tensor):
        return [float(p) for p in prices.detach().flatten().cpu().tolist()]
    return [float(p) for p in prices]


@dataclass(frozen=True)
class Baselines:
    """Constant predictors fitted on the training split: the mean or median price, the majority category."""

    mean_price: float
    median_price: float
    majority_category: str

    @classmethod
    def fit(cls, prices: Sequence[float], categories: Sequence[str]) -> Baselines:
        """Mean and median (the mean of the middle two for an even count) price; the most common category,
        ties going to the one seen first."""
        values = [float(p) for p in prices]
        if not values or not categories:
            raise ValueError("Baselines.fit needs at least one training price and one category")
        majority = Counter(categories).most_common(1)[0][0]  # Counter keeps first-seen order among ties
        return cls(statistics.fmean(values), float(statistics.median(values)), majority)

    def predictions(self, n: int, price: str = "mean") -> list[ParsedAnswer]:
        """`n` identical answers: the `price` ("mean" or "median") price, the majority category, no title."""
        prices = {"mean": self.mean_price, "median": self.median_price}
        if price not in prices:
            raise ValueError(f"price must be 'mean' or 'median', got {price!r}")
        return [ParsedAnswer(title=None, category=self.majority_category, price=prices[price])] * n


def baseline_metrics(
    baselines: Baselines,
    prices: torch.Tensor | Sequence[float],
    categories: Sequence[str],
    titles: Sequence[str],
) -> dict[str, dict[str, float]]:
    """`ProductMetrics` of the constant baselines on one split: {"train_mean": {...}, "train_median": {...}}.

    Both predict the majority training category and no title (so title scores are 0), and one price for
    every product, so their `price_spearman` is 0 (see `rank_correlation`).
    """
    true_prices = _as_floats(prices)
    n = len(true_prices)
    scores = {}
    for name, price in (("train_mean", "mean"), ("train_median", "median")):
        metric = ProductMetrics()
        answers = baselines.predictions(n, price)
        metric.update(answers, prices, categories, titles)
        scores[name] = {key: float(value) for key, value in metric.compute().items()}
        scores[name]["price_spearman"] = rank_correlation([a.price for a in answers], true_prices)
    return scores


def split_baselines(truth: Mapping[str, Mapping[str, Sequence]]) -> dict[str, dict[str, dict[str, float]]]:
    """{split: `baseline_metrics`} of val and test, the baselines fitted on train. `truth` holds every split's
    true fields as columns keyed by name (`ProductDataModule.truth`); an empty split is left out."""
    fitted = Baselines.fit(truth["train"]["price"], truth["train"]["category"])
    return {split: baseline_metrics(fitted, truth[split]["price"], truth[split]["category"], truth[split]["title"])
            for split in ("val", "test") if len(truth[split]["price"])}
