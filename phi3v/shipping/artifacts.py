"""W&B artifacts of a finished run: the adapter as a model artifact, the prediction CSVs as a dataset.

Model artifact `phi3v-adapter-<base>` (type "model"; one collection per base model, a version per run):
the export directory's files, with metadata
  model_spec   how to rebuild the base (model_spec.json)
  prompt       the task the adapter was trained with: question, answer template, typed fields (prompt.json)
  validation   the monitored key, its best value in the run, and the metrics of the exported weights
  test         test metrics of the exported weights (when the run tested)
Aliases: "latest" always; "best" only when the exported weights are the run's best by the monitored
metric (the last evaluation was the best one): the export holds the final weights, and an alias must
not claim otherwise.

Dataset artifact `run-<run id>-predictions` (type "dataset"): every predictions/*.csv of the run as the file
and as a wandb.Table of the same name (browsable in the UI).

Offline runs stage the files under WANDB_DATA_DIR (the run dir's wandb/, see loggers.py) and record the
artifacts in the offline run's .wandb file: `wandb sync <run>/wandb/offline-run-*` uploads them later.
"""

from __future__ import annotations

import csv
import logging
import math
import re
from dataclasses import asdict
from pathlib import Path

from phi3v.modeling.model_spec import ModelSpec
from phi3v.task import TaskSpec, task_record
from phi3v.task.scoring import numeric_columns

log = logging.getLogger(__name__)


def model_artifact_name(spec: ModelSpec) -> str:
    """`phi3v-adapter-<base>`: the base's last path part, in the characters W&B allows in names."""
    base = Path(spec.name_or_path.rstrip("/")).name or spec.name_or_path
    return "phi3v-adapter-" + re.sub(r"[^A-Za-z0-9._-]+", "-", base).strip("-")


def is_best(monitor_mode: str, best: float | None, exported: float | None) -> bool:
    """Whether the exported weights' monitored value is the run's best (ties count as best)."""
    if best is None or exported is None or not (math.isfinite(best) and math.isfinite(exported)):
        return False
    return exported <= best if monitor_mode == "min" else exported >= best


def best_score(trainer) -> float | None:
    """The best monitored value of the run's (first) ModelCheckpoint, or None before any evaluation."""
    score = getattr(trainer.checkpoint_callback, "best_model_score", None)
    return None if score is None else float(score)


def log_run_artifacts(
    run,
    adapter_dir: str | Path,
    predictions_dir: str | Path,
    spec: ModelSpec,
    task: TaskSpec,
    monitor: str,
    monitor_mode: str,
    best_score: float | None,
    scores: dict[str, dict[str, float]],
) -> list[str]:
    """Log the adapter and the predictions of a finished run to the wandb `run`; return the aliases given.

    Args:
        run: the wandb Run (WandbLogger.experiment), online or offline.
        adapter_dir: the export written at the end of the run.
        predictions_dir: the run's predictions/ (EvaluationReport's CSVs); skipped when empty.
        monitor, monitor_mode, best_score: checkpoint.monitor ("val/price_mape"), "min"/"max", and its best value.
        scores: split -> metrics of the exported weights (the module's last evaluation of each split).
    """
    import wandb

    exported = scores.get("val", {}).get(monitor.split("/", 1)[-1])
    aliases = ["latest", "best"] if is_best(monitor_mode, best_score, exported) else ["latest"]
    metadata = json_safe({
        "model_spec": asdict(spec),
        "prompt": task_record(task),
        "validation": {"monitor": monitor, "mode": monitor_mode, "best": best_score, **scores.get("val", {})},
        "test": scores.get("test", {}),
    })
    model = wandb.Artifact(model_artifact_name(spec), type="model", metadata=metadata,
                           description=f"LoRA adapter of {spec.name_or_path} (phi3v export: predict, app, export)")
    model.add_dir(str(adapter_dir))
    run.log_artifact(model, aliases=aliases)
    files = sorted(Path(predictions_dir).glob("*.csv"))
    if files:
        predictions = wandb.Artifact(f"run-{run.id}-predictions", type="dataset",
                                     metadata={"files": [f.name for f in files]},
                                     description="every generated answer of the run's evaluations, one CSV each")
        for path in files:
            predictions.add_file(str(path))
            predictions.add(csv_table(path, task), path.stem)
        run.log_artifact(predictions, aliases=["latest"])
    log.info("W&B artifacts: %s (%s)%s", model.name, ", ".join(aliases),
             f" and {len(files)} prediction tables" if files else "")
    return aliases


def json_safe(value):
    """`value` with NaN and infinities as None (W&B metadata is strict JSON; a metric of no parsed price is NaN)."""
    if isinstance(value, dict):
        return {key: json_safe(item) for key, item in value.items()}
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def csv_table(path: Path, task: TaskSpec):
    """A wandb.Table of a predictions CSV of `task`: each number field's columns (`numeric_columns`: parsed,
    true, error) as floats and each `<field>_match` as a bool (empty = None), the rest as text."""
    import wandb

    with path.open(newline="") as handle:
        rows = list(csv.reader(handle))
    numeric = set(numeric_columns(task))
    matches = {f"{spec.name}_match" for spec in task.fields if not spec.numeric}
    readers = [_float if name in numeric else _bool if name in matches else str for name in rows[0]]
    data = [[read(value) for read, value in zip(readers, row)] for row in rows[1:]]
    return wandb.Table(columns=rows[0], data=data)


def _float(value: str) -> float | None:
    return float(value) if value else None


def _bool(value: str) -> bool | None:
    return value == "True" if value else None
