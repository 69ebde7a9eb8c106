"""Tier 3: the benchmarks run end to end on the CPU, so they cannot rot (figures are not asserted), and
never write a CPU run's tables into benchmarks/results."""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[1]


def run(script: str, *arguments: str) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, str(REPO / "benchmarks" / script), *arguments], cwd=REPO,
                            capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    return result


def results_files() -> set[Path]:
    return set((REPO / "benchmarks" / "results").iterdir())


def no_new_results(before: set[Path]) -> bool:
    """Whether benchmarks/results holds the files it held `before` (new ones are removed, so a failing
    run leaves the checkout clean)."""
    new = results_files() - before
    for path in new:
        path.unlink()
    return not new


@pytest.mark.slow
def test_gpu_benchmark_runs_on_cpu_with_the_tiny_model(tmp_path):
    run("gpu.py", "--device", "cpu", "--batches", "1", "--checkpointing", "off,on", "--attention", "sdpa",
        "--methods", "lora,qlora", "--warmup", "0", "--steps", "1", "--out", str(tmp_path))
    cells = json.loads((tmp_path / "gpu.json").read_text())["cells"]
    assert [(c["method"], c["checkpointing"]) for c in cells] == [
        ("lora", "off"), ("lora", "on"), ("qlora", "off"), ("qlora", "on")]
    for cell in cells:
        assert cell["note"] == "" and cell["step_s"] > 0 and cell["tflops"] > 0
        assert cell["tokens_per_sample"] == 339  # num_crops 1: 313 image tokens + prompt + answer
    assert "| qlora | 1 | 1 | on | sdpa | none | recipe | 339 |" in (tmp_path / "gpu.md").read_text()


@pytest.mark.slow
def test_gpu_benchmark_on_cpu_writes_to_a_temporary_dir_and_names_why_liger_cannot_run():
    before = results_files()
    result = run("gpu.py", "--device", "cpu", "--batches", "1", "--checkpointing", "selective", "--attention",
                 "sdpa", "--methods", "lora", "--kernels", "liger", "--warmup", "0", "--steps", "1")
    assert no_new_results(before)  # a CPU run's figures never land in benchmarks/results
    out = Path(result.stdout.strip().splitlines()[-1].split("tables: ")[1].split(", ")[0]).parent
    (cell,) = json.loads((out / "gpu.json").read_text())["cells"]
    assert cell["step_s"] is None and cell["note"].startswith(
        "skipped: model.spec.kernels=liger runs Triton kernels, which need a CUDA GPU")


@pytest.mark.slow
def test_gpu_benchmark_checkpoints_every_nth_layer_and_compiles_each_layer(tmp_path, monkeypatch):
    """The two levers for MFU (issue 11) are wired: every-2nd-layer checkpointing reaches the model, and
    --compile compiles every decoder and CLIP layer (the eager backend: dynamo traces, nothing is built)."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        import gpu
    finally:
        sys.path.remove(str(REPO / "benchmarks"))
    labels = [gpu.checkpointing_label(c) for c in ("off", "on", "1", "2", "every3", "selective", "offload")]
    assert labels == ["off", "on", "on", "every 2", "every 3", "selective", "offload"]
    with pytest.raises(ValueError, match="--checkpointing"):
        gpu.checkpointing_label("0")
    model = gpu.build("lora", "tiny", torch.float32, torch.device("cpu"))
    base = model.get_base_model()
    gpu.set_checkpointing(model, "every 2")
    assert [layer.gradient_checkpointing for layer in base.model.layers] == [
        i % 2 == 0 for i in range(len(base.model.layers))]
    gpu.compile_layers(model, "eager")
    layers = [*base.model.layers, *base.vision_layers()]
    assert layers and all(layer._compiled_call_impl is not None for layer in layers)

    run("gpu.py", "--device", "cpu", "--batches", "1", "--checkpointing", "2", "--attention", "sdpa",
        "--methods", "lora", "--compile", "--compile-backend", "eager", "--warmup", "1", "--steps", "1",
        "--out", str(tmp_path))
    (cell,) = json.loads((tmp_path / "gpu.json").read_text())["cells"]
    assert (cell["checkpointing"], cell["compiled"], cell["note"]) == ("every 2", True, "") and cell["step_s"] > 0
    assert "| lora | 1 | 1 | every 2 | sdpa +compile | none | recipe | 339 |" in (tmp_path / "gpu.md").read_text()


def benchmark_module(name: str):
    """A script of benchmarks/ imported as a module (they are scripts, not a package)."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        return importlib.import_module(name)
    finally:
        sys.path.remove(str(REPO / "benchmarks"))


def test_threads_benchmark_busy_loops_run_in_their_own_sessions_and_are_killed():
    """The load beside a run is another application: its own session (autogroup), gone after the run."""
    threads = benchmark_module("threads")
    loops = threads.start_busy_loops(2)
    try:
        assert all(os.getsid(loop.pid) == loop.pid != os.getsid(0) for loop in loops)
        assert all(loop.poll() is None for loop in loops)
    finally:
        threads.stop(loops)
    assert [loop.returncode for loop in loops] == [-9, -9]


@pytest.mark.slow
def test_threads_benchmark_rates_policies_beside_a_busy_loop(tmp_path):
    result = run("threads.py", "--steps", "10", "--policies", "one,auto", "--loads", "1",  # the bar shows 10
                 "--out", str(tmp_path / "t.md"))
    table = (tmp_path / "t.md").read_text().splitlines()
    assert table[2:4] == ["| policy | 1 busy loop (it/s) |", "|---|---|"]
    assert [row.split(" | ")[0] for row in table[4:]] == ["| 1 thread", "| auto (default)"]
    assert all(float(row.split(" | ")[1].rstrip(" |")) > 0 for row in table[4:])
    assert "threads: 1 of " in result.stdout and "(hardware.threads=auto: " in result.stdout


@pytest.mark.slow
def test_gpu_check_runs_every_phase_on_cpu_and_writes_only_where_asked(tmp_path):
    """benchmarks/gpu_check.sh as a GPU box runs it (without wheels to install), on the tiny model: the
    cells with PyTorch's kernels and every checkpointing mode, Liger's cells refused by name, bf16
    fidelity, the short train.py run with two validations and the validation share."""
    before = results_files()
    environment = {**os.environ, "PYTHON": sys.executable, "WHEELS": str(tmp_path / "no-wheels")}
    result = subprocess.run(["bash", str(REPO / "benchmarks" / "gpu_check.sh"), "--device", "cpu", "--out",
                             str(tmp_path / "out"), "--workdir", str(tmp_path / "work")],
                            cwd=REPO, env=environment, capture_output=True, text=True, timeout=900)
    assert no_new_results(before) and result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    phases = {p["phase"]: p for p in json.loads((tmp_path / "out" / "gpu_check.json").read_text())["phases"]}
    assert list(phases) == ["kernels-test", "eager", "liger", "train", "liger+compile"]
    assert phases["kernels-test"]["status"].startswith("skipped: no CUDA device")
    for group in ("liger", "liger+compile"):
        assert phases[group]["status"].startswith("skipped: model.spec.kernels=liger runs Triton kernels")
        assert {c["note"] for c in phases[group]["cells"]} == {
            "skipped: model.spec.kernels=liger cannot run here (see Phases)"}
    eager = phases["eager"]
    assert eager["status"] == "ok"
    assert [(c["checkpointing"], c["lora"]) for c in eager["cells"]] == [
        ("off", "recipe"), ("on", "recipe"), ("selective", "recipe"), ("offload", "recipe"),
        ("on", "peft-cast"), ("on", "dropout-0")]
    assert all(c["note"] == "" and c["step_s"] > 0 for c in eager["cells"])
    fidelity = eager["fidelity"]
    assert fidelity["tokens"] == 339 and fidelity["answer_tokens"] > 0
    assert 0 < fidelity["mean_abs_diff"] <= fidelity["max_abs_diff"] and 0 <= fidelity["top1_agreement"] <= 1
    train = phases["train"]
    assert train["status"] == "ok" and len(train["figures"]["validation_s"]) == 2
    assert 0 < train["figures"]["validation_share"] < 1 and train["figures"]["median_batch_s"] > 0
    report = (tmp_path / "out" / "gpu_check.md").read_text()
    assert "## Targets" in report and "- validation share target <= 5%:" in report
    assert sorted(p.name for p in (tmp_path / "work").glob("*.log")) == ["eager.log", "train.log"]


def test_gpu_check_figures_and_verdicts_follow_the_recipes_cadence_and_the_targets(tmp_path):
    """The validation share: one validation per half epoch of 2,400 photos in batches of 4 (300 batches);
    the MFU targets: the best batch-4 cell within 76 GiB (an 80 GB card) and within 24 GiB."""
    gpu_check = benchmark_module("gpu_check")
    (tmp_path / "csv").mkdir()
    (tmp_path / "csv" / "metrics.csv").write_text(
        "step,train/samples_per_s,train/peak_memory_gib,val/seconds\n"
        "0,8.0,13.0,\n1,4.0,13.5,\n1,,,10.0\n2,4.0,13.1,\n2,,,30.0\n")
    figures = gpu_check.train_figures(tmp_path, batch_size=4)
    assert figures["batch_s"] == [0.5, 1.0, 1.0] and figures["validation_s"] == [10.0, 30.0]
    assert (figures["median_batch_s"], figures["median_validation_s"], figures["peak_memory_gib"]) == (1.0, 20.0, 13.5)
    assert figures["batches_between_validations"] == 300 and figures["validation_share"] == 20 / 320

    def cell(checkpointing, batch, mfu, reserved):
        return {"checkpointing": checkpointing, "batch": batch, "mfu": mfu, "peak_reserved_gib": reserved,
                "kernels": "liger", "compiled": checkpointing == "selective", "step_s": 0.5}

    cells = [cell("off", 4, 0.41, 77.0), cell("selective", 4, 0.38, 30.0), cell("on", 4, 0.33, 20.0),
             cell("offload", 4, 0.20, 10.0), cell("off", 1, 0.90, 5.0), cell("on", 4, None, None)]
    assert gpu_check.verdicts(cells, figures) == [
        "- MFU target 40% (fits 80 GB): NOT met: 38.0% with checkpointing selective, kernels liger + compile, "
        "batch 4 (30.0 GiB reserved, 0.500 s a step)",
        "- MFU target 32% (<= 24 GB): met: 33.0% with checkpointing on, kernels liger, batch 4 (20.0 GiB "
        "reserved, 0.500 s a step)",
        "- validation share target <= 5%: NOT met: 6.2% (a validation 20.0 s per 300 batches of 1.000 s)"]
    assert gpu_check.verdicts([], None)[-1] == "- validation share target 5%: not measured"


@pytest.mark.slow
def test_app_probes_run_against_the_app(tmp_path):
    """benchmarks/app_probes.py (the web demo under hostile clients), its quick groups only."""
    run("app_probes.py", "--only", "paths,words", "--out", str(tmp_path / "probes.md"), "--log",
        str(tmp_path / "app.log"), "--", "preset=tiny", "max_new_tokens=2")
    rows = (tmp_path / "probes.md").read_text().splitlines()
    assert rows[0] == "| probe | result | time (s) | server still answering |" and len(rows) == 2 + 12
    assert rows[2].startswith("| GET /../../etc/passwd | 404 Not Found") and rows[2].endswith(" s) |")
    assert "| POST multipart (curl -F) | 200 {" in rows[-1]
