"""Tier 3: `python train.py` end to end in a subprocess (Lightning re-launches are never run in pytest).

A small run produces checkpoints, the adapter, metrics, the scatter PNG and offline W&B files; a run
killed with SIGKILL and resumed ends at the same step with the same trainable weights as an
uninterrupted one.
"""

from __future__ import annotations

import csv
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from summary_text import field_tables, split_lines
from wandb_offline import history_counts, offline_artifacts

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[1]
# One thread: tiny matrices gain nothing from more, runs compared with each other need the same float sums,
# and the suite's machine is busy (the CLIs' subprocesses get OMP_NUM_THREADS=1, conftest.py `one_thread`).
SMALL = [
    "data.synthetic.num_products=64", "data.limit=64", "data.val_fraction=0.125", "data.test_fraction=0.125",
    "data.batch_size=4", "data.eval_batch_size=8", "evaluation.max_new_tokens=24", "trainer.log_every_n_steps=2",
    "hardware.threads=1",
]


def train(run_dir: Path, data_dir: Path, *overrides: str, wait: bool = True, env: dict | None = None):
    command = [sys.executable, "train.py", f"hydra.run.dir={run_dir}", f"data.data_dir={data_dir}", *SMALL, *overrides]
    environment = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true", **(env or {})}
    environment.pop("WANDB_API_KEY", None)
    process = subprocess.Popen(command, cwd=REPO, env=environment, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True)
    if not wait:
        return process
    output, _ = process.communicate(timeout=600)
    assert process.returncode == 0, output[-4000:]
    return output


@pytest.mark.slow
def test_small_run_writes_everything(tmp_path):
    run = tmp_path / "run"
    output = train(run, tmp_path / "data", "trainer.max_steps=6", "trainer.val_check_interval=6",
                   "checkpoint.every_n_train_steps=3", "data.val_limit=4", "hardware.threads=auto",  # the default
                   env={"WANDB_SILENT": "false"})  # W&B's console output as users see it
    assert re.search(r"threads: \d+ of [\d.]+ cores \(hardware\.threads=auto: [\d.]+ CPUs busy elsewhere; ", output)
    assert (run / "checkpoints" / "last.ckpt").is_file() and (run / "checkpoints" / "best.ckpt").is_file()
    assert (run / "adapter" / "adapter_model.safetensors").stat().st_size > 1000
    assert (run / "adapter" / "adapter_config.json").is_file() and (run / "adapter" / "tokenizer.json").is_file()
    # the model card's metrics: the exported weights' last evaluation of each split (the whole val split, the test)
    results = json.loads((run / "adapter" / "metrics.json").read_text())
    assert results["dataset"] == "synthetic" and [results["scores"][s]["count"] for s in ("val", "test")] == [8, 8]
    assert "| count | 8 | 8 |" in (run / "adapter" / "README.md").read_text()
    assert list((run / "plots").glob("val_step*_price_scatter.png"))
    assert (run / "plots" / "test_price_scatter.png").is_file()
    assert (run / "splits.json").is_file()
    # data.val_limit=4: the validation in training scored 4 of the 8 val products, the one after it all 8
    rows = {p.stem: len(list(csv.DictReader(p.open(newline="")))) for p in (run / "predictions").glob("val*.csv")}
    assert rows == {"val_step000006": 4, "val": 8}
    assert (run / "plots" / "val_price_scatter.png").is_file()
    offline = list((run / "wandb").glob("offline-run-*"))
    assert offline and list(offline[0].glob("*.wandb")), "offline W&B run files in the run dir"
    # what `wandb sync` would upload (besides the media tables' own "run_table" artifacts)
    staged = {a.type: a for a in offline_artifacts(run) if a.type in ("model", "dataset")}
    assert set(staged) == {"model", "dataset"} and "latest" in staged["model"].aliases
    assert "adapter_model.safetensors" in staged["model"].files and "test.csv" in staged["dataset"].files
    assert staged["model"].metadata["validation"]["monitor"] == "val/price_mape"
    # every evaluation's table and scatter reached the W&B history: 2 validations (the subset in training,
    # the whole split after it) and the test (an explicit step= below W&B's step counter dropped some)
    logged = history_counts(run)
    assert [logged[f"{split}/{media}"] for split in ("val", "test") for media in ("predictions", "price_scatter")] \
        == [2, 2, 1, 1]
    assert_summary_shape(output, run)
    checkpoint = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert all("lora_" in k or "modules_to_save" in k for k in checkpoint["state_dict"])  # no frozen base weights
    # The adapter holds the trained values: those of the final checkpoint (PEFT drops the adapter name "default")
    adapter = load_file(run / "adapter" / "adapter_model.safetensors")
    trained = {k.removeprefix("model.").replace(".default.", ".").replace(".modules_to_save.", "."): v
               for k, v in checkpoint["state_dict"].items()}
    assert len(trained) > 10 and trained.keys() <= adapter.keys()
    for key, value in trained.items():
        assert torch.equal(adapter[key], value), key
    assert any(value.abs().sum() > 0 for key, value in trained.items() if "lora_B" in key)  # B starts at 0: trained


def assert_summary_shape(output: str, run: Path) -> None:
    """The end of a run: per split a counts line, the learning curve, a table per field (every summary metric,
    Spearman included) and a verdict; the overall verdict; the commands that try the result. No Lightning
    table of logged metrics."""
    from phi3v.task import TaskSpec
    from phi3v.task.scoring import summary_keys

    keys = summary_keys(TaskSpec())  # the seed task's rows, as the summary always printed them
    summary = output[output.index("\nval: "):]
    for split in ("val", "test"):  # 8 products each, all scored
        block = split_lines(output, split)
        assert block[0].startswith(f"{split}: 8 answers, parse rate "), block
        evaluations = block[1].removeprefix("per evaluation: loss ").split(" | ")[0].split(" -> ")
        assert len(evaluations) == (2 if split == "val" else 1), block  # the run validates twice, tests once
        tables = field_tables(block)
        assert list(tables) == ["price (number)", "category (category)", "title (text)"], block
        assert [row[0] for table in tables.values() for row in table[1:]] == list(keys), block
        assert all(table[0] == ["metric", "model", "train_mean", "train_median", "beats baselines?"]
                   for table in tables.values())
        assert block[-1].startswith(f"{split} verdict: too little evaluated")
    assert "\nverdict: too little evaluated to judge; test price rank correlation (Spearman) " in summary
    offline = next((run / "wandb").glob("offline-run-*"))
    commands = summary[summary.index("try it:\n"):].splitlines()[1:5]
    assert [c.split("  #")[0].strip() for c in commands] == [
        f"python -m phi3v.app adapter={run / 'adapter'}", f"python -m phi3v.predict adapter={run / 'adapter'} "
        "image=<photo.jpg>", f"python -m phi3v.predict adapter={run / 'adapter'} split=test out=test_predictions.csv",
        f"wandb sync {offline}"]
    assert "Test metric" not in output and "Validate metric" not in output  # Lightning's tables are off
    assert "Run history:" not in output and "Run summary:" not in output  # and W&B's (logger.quiet)


def trainable_state(checkpoint_path: Path) -> tuple[int, dict]:
    checkpoint = torch.load(checkpoint_path, map_location="cpu", weights_only=False)
    return checkpoint["global_step"], checkpoint["state_dict"]


@pytest.mark.slow
def test_kill_and_resume_matches_an_uninterrupted_run(tmp_path):
    # LoRA dropout > 0 draws from the torch RNG every step: a resume that did not restore it would train differently
    settings = ["trainer.max_steps=12", "trainer.limit_val_batches=0", "checkpoint.monitor=null", "test=false",
                "export=false", "logger=none", "checkpoint.every_n_train_steps=4", "model.lora.dropout=0.1"]
    data = tmp_path / "data"
    train(tmp_path / "full", data, *settings)
    # The same run, killed hard once its step-4 checkpoint exists, then resumed from the run dir.
    killed = tmp_path / "killed"
    process = train(killed, data, *settings, wait=False)
    last = killed / "checkpoints" / "last.ckpt"
    deadline = time.time() + 300
    while time.time() < deadline and not (last.is_file() and trainable_state(last)[0] >= 4):
        time.sleep(0.2)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    step_at_kill = trainable_state(last)[0]
    assert 4 <= step_at_kill < 12
    train(killed, data, *settings, f"resume={killed}")
    full_step, full = trainable_state(tmp_path / "full" / "checkpoints" / "last.ckpt")
    resumed_step, resumed = trainable_state(last)
    assert full_step == resumed_step == 12
    assert full.keys() == resumed.keys()
    for key in full:
        torch.testing.assert_close(resumed[key], full[key], atol=1e-6, rtol=1e-5, msg=key)


@pytest.mark.slow
def test_sigterm_saves_a_checkpoint_before_exit(tmp_path):
    run = tmp_path / "run"
    process = train(run, tmp_path / "data", "trainer.max_steps=400", "trainer.limit_val_batches=0",
                    "checkpoint.monitor=null", "checkpoint.every_n_train_steps=1000", "test=false", "export=false",
                    "logger=none", "data.synthetic.num_products=400", "data.limit=400", wait=False)
    chunks: list[str] = []
    reader = threading.Thread(target=lambda: chunks.extend(iter(lambda: process.stdout.read(64), "")), daemon=True)
    reader.start()
    deadline = time.time() + 300
    while time.time() < deadline and "train/loss" not in "".join(chunks):  # training steps are running
        time.sleep(0.5)
    process.send_signal(signal.SIGTERM)
    process.wait(timeout=120)
    reader.join(timeout=10)
    output = "".join(chunks)
    last = run / "checkpoints" / "last.ckpt"
    assert last.is_file(), output[-3000:]
    step = trainable_state(last)[0]
    assert 0 < step < 400
    assert "SIGTERM: saved" in output


@pytest.mark.slow
def test_a_short_run_resumes_from_its_final_last_ckpt_in_its_own_run_dir(tmp_path):
    """3 steps (fewer than checkpoint.every_n_train_steps): last.ckpt is the final state; resume=<run dir>
    continues there (no new outputs/<date>/<time>), keeps one best.ckpt, and the loader resumes mid-epoch."""
    settings = [f"data.data_dir={tmp_path / 'data'}", *SMALL, "trainer.val_check_interval=2", "logger=none",
                "test=false", "export=false", "checkpoint.every_n_train_steps=50"]
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}

    def run(*overrides: str) -> str:
        done = subprocess.run([sys.executable, str(REPO / "train.py"), *settings, *overrides], cwd=tmp_path,
                              env=environment, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
        return done.stdout + done.stderr

    run("trainer.max_steps=3")
    (run_dir,) = (tmp_path / "outputs").glob("*/*")
    last = run_dir / "checkpoints" / "last.ckpt"
    assert trainable_state(last)[0] == 3  # the end of the run, not the last step interval or validation
    output = run("trainer.max_steps=5", f"resume={run_dir.relative_to(tmp_path)}")  # as typed: outputs/<d>/<t>
    assert list((tmp_path / "outputs").glob("*/*")) == [run_dir]  # no second run dir
    assert trainable_state(last)[0] == 5
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["best.ckpt", "last.ckpt"]
    assert (run_dir / ".hydra" / "config.yaml").is_file() and list((run_dir / ".hydra").glob("resumed_*"))
    assert "not resumable" not in output
