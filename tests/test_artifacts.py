"""Tier 2: the run's W&B artifacts (adapter as a model, predictions as a dataset), logged to a real
offline W&B run and read back from its files (tests/wandb_offline.py), as `wandb sync` would upload them.
The end-to-end run in test_train_e2e.py checks train.py logs them too."""

from __future__ import annotations

import json
import os

import pytest
from demo_run import PRODUCTS, build_demo_run
from wandb_offline import offline_artifacts

from phi3v.inference import prediction_columns
from phi3v.modeling.model_spec import ModelSpec
from phi3v.shipping.artifacts import is_best, log_run_artifacts, model_artifact_name
from phi3v.task import TaskSpec, task_record

pytestmark = pytest.mark.unit

SCORES = {"val": {"price_mape": 41.5, "category_accuracy": 0.5},
          "test": {"price_mape": 44.0, "price_mae": float("nan")}}


@pytest.fixture()
def offline_run(tmp_path, monkeypatch):
    import wandb

    monkeypatch.setenv("WANDB_DATA_DIR", str(tmp_path / "wandb"))  # as loggers.build_wandb_logger sets it
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    (tmp_path / "wandb").mkdir()
    run = wandb.init(project="phi3v-test", mode="offline", dir=str(tmp_path))
    yield run, tmp_path
    if wandb.run is not None:
        wandb.run.finish()


def test_adapter_and_predictions_are_staged_with_metadata_and_aliases(offline_run, tmp_path_factory):
    run, run_dir = offline_run
    demo = build_demo_run(tmp_path_factory.mktemp("demo"))
    adapter, spec, task = demo / "adapter", ModelSpec(), TaskSpec()
    aliases = log_run_artifacts(run, adapter, demo / "predictions", spec, task, "val/price_mape", "min", 41.5,
                                SCORES)
    run.finish()
    assert aliases == ["latest", "best"]
    model, predictions = offline_artifacts(run_dir)
    assert (model.name, model.type, sorted(model.aliases)) == ("phi3v-adapter-tiny", "model", ["best", "latest"])
    assert model.metadata["model_spec"] == json.loads((adapter / "model_spec.json").read_text())
    assert model.metadata["prompt"] == json.loads((adapter / "prompt.json").read_text()) == task_record(task)
    assert model.metadata["validation"] == {"monitor": "val/price_mape", "mode": "min", "best": 41.5, **SCORES["val"]}
    assert model.metadata["test"] == {"price_mape": 44.0, "price_mae": None}  # NaN is not JSON: None
    written = sorted(p.name for p in adapter.iterdir())
    assert sorted(model.files) == written
    for name in written:  # staged copies, so a later change to the run dir cannot alter what gets synced
        assert model.files[name].read_bytes() == (adapter / name).read_bytes()
        assert str(model.files[name]).startswith(str(run_dir / "wandb")), "staged inside the run dir"
    assert (predictions.name, predictions.type) == (f"run-{run.id}-predictions", "dataset")
    assert sorted(predictions.files) == ["test.csv", "test.table.json"]
    table = json.loads(predictions.files["test.table.json"].read_text())
    columns = list(prediction_columns(task))
    assert table["columns"] == columns
    true_price, parsed_price, error = map(columns.index, ("true_price", "parsed_price", "price_error_pct"))
    assert [row[true_price] for row in table["data"]] == [p[4] for p in PRODUCTS]
    assert table["data"][0][error] == pytest.approx(100 * (420 - 450) / 450)  # a float, signed
    assert table["data"][2][parsed_price] is None and table["data"][2][error] is None  # unparsed: empty
    title, category = columns.index("true_title"), columns.index("category_match")
    assert [row[title] for row in table["data"]] == [p[2] for p in PRODUCTS]  # text stays text
    assert [row[category] for row in table["data"]] == [True, False, False]  # a match is a bool


def test_best_alias_only_when_the_exported_weights_are_the_best():
    assert is_best("min", 40.0, 40.0) and is_best("max", 0.9, 0.9)
    assert not is_best("min", 40.0, 41.0) and not is_best("max", 0.9, 0.8)
    assert not is_best("min", None, 40.0) and not is_best("min", 40.0, float("nan"))


def test_model_artifact_names_follow_the_base():
    assert model_artifact_name(ModelSpec()) == "phi3v-adapter-tiny"
    assert model_artifact_name(ModelSpec("random:phi3v")) == "phi3v-adapter-random-phi3v"
    phi35v = ModelSpec("microsoft/Phi-3.5-vision-instruct")
    assert model_artifact_name(phi35v) == "phi3v-adapter-Phi-3.5-vision-instruct"
    assert model_artifact_name(ModelSpec(os.path.join("snapshots", "abc123", ""))) == "phi3v-adapter-abc123"


def test_wandb_logger_stages_artifacts_and_table_media_in_the_run_dir(tmp_path, monkeypatch):
    """W&B stages artifact and table files under WANDB_DATA_DIR (default ~/.local/share/wandb): an offline
    run must keep them in its run dir, where `wandb sync` finds them, whatever the variable said before."""
    from wandb.sdk.artifacts.staging import get_staging_dir

    from phi3v.training.loggers import build_wandb_logger

    monkeypatch.setenv("WANDB_DATA_DIR", str(tmp_path / "home" / ".local" / "share" / "wandb"))  # restored after
    logger = build_wandb_logger(tmp_path / "run", mode="disabled")
    assert get_staging_dir() == str(tmp_path / "run" / "wandb" / "artifacts" / "staging")
    assert logger.save_dir == str(tmp_path / "run")
