"""What an evaluation leaves behind for people: a scatter plot per number field, a W&B table of its answers,
the end-of-run summary. (The prediction rows and their CSVs are phi3v.inference's.)

The summary names the task's fields: per split, one table per field (numbers first, then categories, then
texts: `phi3v.task.scoring.summary_groups`) under a line naming the field and its type, its metrics compared
with every baseline; the learning curve follows the loss, every category's accuracy and every number's rank
correlation. For the seed task (title, category, price) the rows, figures and verdicts are those it always
printed, its one table now cut into price, category and title.

Plots use matplotlib's object API (`Figure` + `FigureCanvasAgg`), never pyplot, so importing this module
does not select a backend or touch global matplotlib state. wandb is imported only inside the function that
needs it.
"""

from __future__ import annotations

import math
import operator
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from phi3v.inference import photo_paths
from phi3v.task import TaskSpec
from phi3v.task.scoring import lower_is_better, prediction_column_names, required_fields, summary_groups, summary_keys

from .evaluation import SplitResult

MIN_JUDGED = 30  # answers below which a verdict against the baselines is noise (a smoke run evaluates a few)
BAND = 0.25  # the shaded band: predictions within ±25% of the true value


def number_scatter(
    true_values: Sequence[float],
    predicted_values: Sequence[float | None],
    path: str | os.PathLike,
    title: str = "",
    name: str = "price",
) -> Path:
    """Predicted vs true values of the number field `name` on log-log axes with the y = x line and a ±25% band,
    written as a PNG (the axes say "true <name>", "predicted <name>").

    Unparsed predictions (None) cannot be drawn; their count is shown in the legend and the title, as is the
    count of non-positive predictions (no place on a log axis). With no drawable point at all (including
    empty input) the PNG still gets written, saying "no predictions" or "no plottable predictions".
    Returns the path written; its folder is created if needed.
    """
    if len(true_values) != len(predicted_values):
        raise ValueError(f"{len(true_values)} true values of {name} but {len(predicted_values)} predictions")
    unparsed = sum(p is None for p in predicted_values)
    points = [(float(t), float(p)) for t, p in zip(true_values, predicted_values) if p is not None]
    plottable = [(t, p) for t, p in points if t > 0 and p > 0 and math.isfinite(t) and math.isfinite(p)]
    skipped = len(points) - len(plottable)
    figure = Figure(figsize=(6, 6), dpi=100, layout="constrained")  # constrained: labels never clipped
    FigureCanvasAgg(figure)  # attaches itself to the figure: savefig renders with Agg
    axes = figure.add_subplot()
    counts = f"n={len(true_values)}, unparsed={unparsed}" + (f", non-positive={skipped}" if skipped else "")
    axes.set_title(f"{title} ({counts})" if title else counts)
    if plottable:
        _draw_points(axes, plottable, unparsed, skipped, name)
    else:
        message = "no predictions" if not true_values else "no plottable predictions"
        axes.text(0.5, 0.5, message, ha="center", va="center", transform=axes.transAxes, fontsize=14)
        axes.set_axis_off()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, format="png")
    return path


def _draw_points(axes, points: list[tuple[float, float]], unparsed: int, skipped: int, name: str) -> None:
    """Scatter, y = x, the ±25% band and log-log axes spanning every point with a margin."""
    true, predicted = zip(*points)
    low, high = min(true + predicted), max(true + predicted)
    low, high = low / 1.5, high * 1.5  # a margin of a factor 1.5 each side; also widens a single point
    line = [low, high]
    axes.fill_between(line, [x * (1 - BAND) for x in line], [x * (1 + BAND) for x in line], color="tab:green",
                      alpha=0.15, label=f"±{BAND:.0%}")
    axes.plot(line, line, color="black", linewidth=1, label="y = x")
    axes.scatter(true, predicted, s=12, alpha=0.7, label=f"predictions ({len(points)})")
    axes.plot([], [], " ", label=f"unparsed: {unparsed}")  # an empty handle: text only in the legend
    if skipped:
        axes.plot([], [], " ", label=f"non-positive: {skipped}")
    axes.set_xscale("log")
    axes.set_yscale("log")
    axes.set_xlim(low, high)
    axes.set_ylim(low, high)
    axes.set_xlabel(f"true {name}")
    axes.set_ylabel(f"predicted {name}")
    axes.legend(loc="upper left")
    axes.grid(True, which="both", alpha=0.3)


def table_columns(task: TaskSpec) -> list[str]:
    """The W&B prediction table's columns: the photo, the answers, then each field's group of the prediction
    row (`parsed_<f>`, `true_<f>`, `<f>_error_pct` or `<f>_match`)."""
    return ["image", "target", "prediction", *prediction_column_names(task)]


def wandb_prediction_table(rows: list[dict], task: TaskSpec, thumbnail: int = 224):
    """A `wandb.Table` of prediction rows of `task` (`phi3v.inference.prediction_row`); each product's first
    photo shrunk to fit `thumbnail` pixels (None if unreadable)."""
    import wandb  # lazily: importing wandb is slow and only W&B runs need it

    columns = table_columns(task)
    table = wandb.Table(columns=columns)
    for row in rows:
        image = _thumbnail(photo_paths(row)[0], thumbnail)
        table.add_data(None if image is None else wandb.Image(image), *(row[name] for name in columns[1:]))
    return table


def _thumbnail(path: str | os.PathLike, size: int):
    """The image at `path` as RGB, shrunk (aspect kept) to fit size x size; None when it cannot be read."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            image = image.convert("RGB")
    except OSError:
        return None
    image.thumbnail((size, size))
    return image


def beats_baselines(
    model: dict[str, float], baselines: dict[str, dict[str, float]], keys: Sequence[str] | None = None
) -> dict[str, bool]:
    """For each metric with a direction, whether the model is strictly better than EVERY baseline.

    Lower is better for the errors (`<field>_mae`, `_mape`, `_mape_parsed`, `_median_ape`), higher for the rest
    (phi3v.task.scoring.lower_is_better); a tie or a NaN is not a win. `count`, and metrics missing from the
    model or from all baselines, are left out.
    """
    result = {}
    for key in keys if keys is not None else model:
        if key not in model or key == "count":
            continue
        scores = [scores[key] for scores in baselines.values() if key in scores]
        if not scores:
            continue
        better = operator.lt if lower_is_better(key) else operator.gt
        result[key] = all(better(model[key], score) for score in scores)  # NaN compares False
    return result


def summary_table(model: dict[str, float], baselines: dict[str, dict[str, float]], keys: Sequence[str]) -> str:
    """A plain-text table: one row per metric of `keys`, columns model | each baseline | beats baselines?
    ("yes"/"no", "n/a" when not comparable). Values with 4 decimals, "-" when missing."""
    cells = _table_cells(model, baselines, keys)
    return "\n".join(_rendered(cells, _widths(cells)))


def summary_tables(model: dict[str, float], baselines: dict[str, dict[str, float]], task: TaskSpec) -> str:
    """The end of a run's tables for one split: per field of `task` (`summary_groups`), a line naming it and its
    type (`price (number)`), then `summary_table` of its metrics. The tables share their column widths, so a
    split's figures line up from one field to the next."""
    groups = summary_groups(task)
    tables = [_table_cells(model, baselines, keys) for _, keys in groups]
    widths = _widths([line for cells in tables for line in cells])
    lines = []
    for (spec, _), cells in zip(groups, tables):
        lines += [f"{spec.name} ({spec.type})", *_rendered(cells, widths)]
    return "\n".join(lines)


def _table_cells(model: dict[str, float], baselines: dict[str, dict[str, float]], keys: Sequence[str]) -> list:
    """The header and one row of cells per key of `summary_table`."""
    wins = beats_baselines(model, baselines, keys)
    lines = [["metric", "model", *baselines, "beats baselines?"]]
    for key in keys:
        cells = [_cell(model.get(key)), *(_cell(scores.get(key)) for scores in baselines.values())]
        verdict = "n/a" if key not in wins else ("yes" if wins[key] else "no")
        lines.append([key, *cells, verdict])
    return lines


def _widths(lines: list[list[str]]) -> list[int]:
    return [max(len(line[i]) for line in lines) for i in range(len(lines[0]))]


def _rendered(lines: list[list[str]], widths: list[int]) -> list[str]:
    """The table's text lines: the header, a rule under it, the rows; cells padded to `widths`."""
    rendered = [" | ".join(cell.ljust(width) for cell, width in zip(line, widths)).rstrip() for line in lines]
    rendered.insert(1, "-+-".join("-" * width for width in widths))
    return rendered


def _cell(value: float | None) -> str:
    return "-" if value is None else f"{float(value):.4f}"


def split_verdict(
    scores: Mapping[str, float], baselines: Mapping[str, Mapping[str, float]], task: TaskSpec
) -> tuple[bool | None, str]:
    """(beats every baseline on every summary metric of `task`?, the sentence saying so); None when too few
    answers were scored to judge."""
    count = int(scores.get("count", 0))
    parsed = round(scores.get("parse_rate", 0) * count) if math.isfinite(scores.get("parse_rate", math.nan)) else 0
    if count < MIN_JUDGED or parsed == 0:
        return None, (
            f"too little evaluated to judge: {count} answers, {parsed} with a readable {_spoken(required_fields(task))}"
            f" (at least {MIN_JUDGED} needed; a smoke run? evaluate more with data.val_fraction, "
            "trainer.limit_val_batches or more steps)"
        )
    keys = summary_keys(task)
    wins = beats_baselines(dict(scores), {k: dict(v) for k, v in baselines.items()}, keys)
    losses = [key for key in keys if not wins.get(key, False)]
    if not losses:
        return True, f"beats every baseline ({', '.join(baselines)}) on all {len(keys)} metrics"
    return False, f"does NOT beat every baseline on {', '.join(losses)}"


def _spoken(names: Sequence[str]) -> str:
    """"price"; "year and price"; "year, mileage and price"."""
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} and {names[-1]}"


def curve_keys(task: TaskSpec) -> tuple[str, ...]:
    """What the learning curve follows per evaluation: the loss, and the figures that show whether the photos
    are read: every category's accuracy, then every number's rank correlation (the seed task: the category is
    the silhouette; the price rank follows the category and the attributes). A task of text fields only
    follows their similarity instead."""
    accuracy = [f"{spec.name}_accuracy" for spec in task.fields if spec.type == "category"]
    ranks = [f"{spec.name}_spearman" for spec in task.fields if spec.numeric]
    texts = [f"{spec.name}_similarity" for spec in task.fields if spec.type == "text"]
    return ("loss", *accuracy, *ranks) if accuracy or ranks else ("loss", *texts)


def learning_curve(history: Sequence[Mapping[str, float]], keys: Sequence[str]) -> str:
    """One line: each of `keys` (`curve_keys`) over the evaluations, e.g. `loss 0.45 -> 0.26 | category_accuracy
    ...`. Validations during training score `data.val_limit` products when it is set; the one after training
    scores the whole split, so its point may differ for that reason alone."""
    return "per evaluation: " + " | ".join(
        f"{key} " + " -> ".join(f"{entry.get(key, math.nan):.3f}" for entry in history) for key in keys
    )


def split_summary(split: str, result: SplitResult, task: TaskSpec) -> str:
    """A line of counts, the learning curve, a metrics table per field against the baselines (`summary_tables`),
    and the split's verdict."""
    count = int(result.scores.get("count", 0))
    lines = [
        f"{split}: {count} answers, parse rate {result.scores.get('parse_rate', math.nan):.3f}, "
        f"{result.distinct_answers} distinct",
        *([learning_curve(result.history, curve_keys(task))] if result.history else []),
        summary_tables(dict(result.scores), {k: dict(v) for k, v in result.baselines.items()}, task),
        f"{split} verdict: {split_verdict(result.scores, result.baselines, task)[1]}",
    ]
    return "\n".join(lines)


def run_summary(results: Mapping[str, SplitResult], task: TaskSpec, commands: Sequence[str] = ()) -> str:
    """The end of a training run: one summary per split, the overall verdict with the test split's rank
    correlation of each number field, then the commands that try the result."""
    blocks = [split_summary(split, result, task) for split, result in results.items()]
    blocks.append(overall_verdict(results, task))
    if commands:
        blocks.append("try it:\n" + "\n".join(f"  {command}" for command in commands))
    return "\n\n".join(blocks)


def overall_verdict(results: Mapping[str, SplitResult], task: TaskSpec) -> str:
    """One line: did the model beat every baseline on every metric of every evaluated split? Then the last
    split's headline figures: each number field's rank correlation (else each category's accuracy, else each
    text's similarity)."""
    if not results:
        return "verdict: nothing evaluated (no val or test split scored)"
    judged = {split: split_verdict(result.scores, result.baselines, task)[0] for split, result in results.items()}
    splits = " and ".join(results)
    if None in judged.values():
        head = "verdict: too little evaluated to judge"
    elif all(judged.values()):
        head = f"verdict: the model learned: it beats every baseline on every metric on {splits}"
    else:
        missed = " and ".join(split for split, won in judged.items() if not won)
        head = f"verdict: NOT yet better than every baseline on {missed}"
    last = "test" if "test" in results else next(reversed(list(results)))
    scores = results[last].scores
    figures = ", ".join(f"{_headline(key)} {scores.get(key, math.nan):.3f}" for key in headline_keys(task))
    return f"{head}; {last} {figures}"


def headline_keys(task: TaskSpec) -> tuple[str, ...]:
    """The overall verdict's figures: every number field's Spearman, else every category's accuracy, else
    every text's similarity."""
    for types, metric in ((("number", "integer"), "spearman"), (("category",), "accuracy"), (("text",), "similarity")):
        keys = tuple(f"{spec.name}_{metric}" for spec in task.fields if spec.type in types)
        if keys:
            return keys
    return ()


def _headline(key: str) -> str:
    """`price_spearman` -> "price rank correlation (Spearman)", `make_accuracy` -> "make accuracy"."""
    name, _, metric = key.rpartition("_")
    return f"{name} rank correlation (Spearman)" if metric == "spearman" else f"{name} {metric}"


def try_commands(
    adapter: str | os.PathLike | None, offline_wandb: str | os.PathLike | None = None, photos: int = 1
) -> list[str]:
    """The commands that try a finished run: the web demo and predictions from its adapter, and the
    upload of an offline W&B run. `photos`: the most photos an item of the run has; predict's example
    names that many (`image=[<photo1>,<photo2>]`), one as `image=<photo.jpg>`."""
    image = "<photo.jpg>" if photos <= 1 else "[" + ",".join(f"<photo{k}>" for k in range(1, photos + 1)) + "]"
    commands = []
    if adapter is not None:
        commands += [
            f"python -m phi3v.app adapter={adapter}  # web demo on http://127.0.0.1:7860",
            f"python -m phi3v.predict adapter={adapter} image={image}",
            f"python -m phi3v.predict adapter={adapter} split=test out=test_predictions.csv",
        ]
    if offline_wandb is not None:
        commands.append(f"wandb sync {offline_wandb}  # upload the offline W&B run")
    return commands
