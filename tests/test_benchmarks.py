"""Tier 3: the benchmarks run end to end on the CPU, so they cannot rot (figures are not asserted)."""

from __future__ import annotations

import json
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


@pytest.mark.slow
def test_gpu_benchmark_runs_on_cpu_with_the_tiny_model(tmp_path):
    run("gpu.py", "--device", "cpu", "--batches", "1", "--checkpointing", "off,on", "--attention", "sdpa",
        "--methods", "lora,qlora", "--warmup", "0", "--steps", "1", "--out", str(tmp_path))
    cells = json.loads((tmp_path / "gpu.json").read_text())["cells"]
    assert [(c["method"], c["checkpointing"]) for c in cells] == [
        ("lora", False), ("lora", True), ("qlora", False), ("qlora", True)]
    for cell in cells:
        assert cell["note"] == "" and cell["step_s"] > 0 and cell["tflops"] > 0
        assert cell["tokens_per_sample"] == 339  # num_crops 1: 313 image tokens + prompt + answer
    assert "| qlora | 1 | 1 | on | sdpa | 339 |" in (tmp_path / "gpu.md").read_text()


@pytest.mark.slow
def test_gpu_benchmark_checkpoints_every_nth_layer_and_compiles_each_layer(tmp_path, monkeypatch):
    """The two levers for MFU (issue 11) are wired: every-2nd-layer checkpointing reaches the model, and
    --compile compiles every decoder and CLIP layer (the eager backend: dynamo traces, nothing is built)."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        import gpu
    finally:
        sys.path.remove(str(REPO / "benchmarks"))
    assert [gpu.checkpointing_every(c) for c in ("off", "on", "2", "every3")] == [0, 1, 2, 3]
    with pytest.raises(ValueError, match="--checkpointing"):
        gpu.checkpointing_every("0")
    model = gpu.build("lora", "tiny", torch.float32, torch.device("cpu"))
    base = model.get_base_model()
    gpu.set_checkpointing(model, 2)
    assert [layer.gradient_checkpointing for layer in base.model.layers] == [
        i % 2 == 0 for i in range(len(base.model.layers))]
    gpu.compile_layers(model, "eager")
    layers = [*base.model.layers, *base.vision_layers()]
    assert layers and all(layer._compiled_call_impl is not None for layer in layers)

    run("gpu.py", "--device", "cpu", "--batches", "1", "--checkpointing", "2", "--attention", "sdpa",
        "--methods", "lora", "--compile", "--compile-backend", "eager", "--warmup", "1", "--steps", "1",
        "--out", str(tmp_path))
    (cell,) = json.loads((tmp_path / "gpu.json").read_text())["cells"]
    assert (cell["checkpointing"], cell["compiled"], cell["note"]) == (2, True, "") and cell["step_s"] > 0
    assert "| lora | 1 | 1 | every 2 | sdpa +compile | 339 |" in (tmp_path / "gpu.md").read_text()


@pytest.mark.slow
def test_app_probes_run_against_the_app(tmp_path):
    """benchmarks/app_probes.py (the web demo under hostile clients), its quick groups only."""
    run("app_probes.py", "--only", "paths,words", "--out", str(tmp_path / "probes.md"), "--log",
        str(tmp_path / "app.log"), "--", "preset=tiny", "max_new_tokens=2")
    rows = (tmp_path / "probes.md").read_text().splitlines()
    assert rows[0] == "| probe | result | time (s) | server still answering |" and len(rows) == 2 + 12
    assert rows[2].startswith("| GET /../../etc/passwd | 404 Not Found") and rows[2].endswith(" s) |")
    assert "| POST multipart (curl -F) | 200 {" in rows[-1]
