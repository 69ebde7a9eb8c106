"""Tier 3: the benchmarks run end to end on the CPU, so they cannot rot (figures are not asserted)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

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
