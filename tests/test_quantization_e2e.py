"""Tier 3: QLoRA through `python train.py` (subprocesses): an nf4 base trains, checkpoints only the
trainable weights, resumes to the same weights as an uninterrupted run, exports a normal adapter, runs
on two DDP ranks with the losses of one process, and FSDP is refused before any work.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from test_distributed_e2e import DDP, LOSS_RTOL, logged
from test_train_e2e import REPO, train, trainable_state

pytestmark = pytest.mark.e2e

NF4 = ["model.spec.quantization=nf4"]
# Constant lr without warmup: a run stopped at step 2 and resumed to step 4 sees the lr of a 4-step run.
STEPS = ["trainer.limit_val_batches=0", "checkpoint.monitor=null", "test=false", "logger=csv",
         "trainer.log_every_n_steps=1", "checkpoint.every_n_train_steps=2", "scheduler.kind=constant",
         "scheduler.warmup_ratio=0"]


@pytest.fixture(scope="module")
def full_run(tmp_path_factory):
    """4 steps of 4 products on an nf4 base, uninterrupted, exporting its adapter."""
    root = tmp_path_factory.mktemp("qlora")
    train(root / "full", root / "data", *NF4, *STEPS, "trainer.max_steps=4", "export=true")
    return root


@pytest.mark.slow
def test_nf4_run_trains_resumes_exactly_and_exports_a_plain_adapter(full_run):
    full, half, data = full_run / "full", full_run / "half", full_run / "data"
    losses = logged(full)["train/loss"]
    assert len(losses) == 4 and losses[-1] < losses[0]
    train(half, data, *NF4, *STEPS, "trainer.max_steps=2", "export=false")
    assert trainable_state(half / "checkpoints" / "last.ckpt")[0] == 2
    train(half, data, *NF4, *STEPS, "trainer.max_steps=4", "export=false", f"resume={half}")
    full_step, expected = trainable_state(full / "checkpoints" / "last.ckpt")
    resumed_step, resumed = trainable_state(half / "checkpoints" / "last.ckpt")
    assert full_step == resumed_step == 4 and expected.keys() == resumed.keys()
    # only LoRA and the modules the tiny recipe trains whole: no packed nf4 weights, no quantization scales
    assert all("lora_" in key or "modules_to_save" in key for key in expected)
    for key in expected:
        torch.testing.assert_close(resumed[key], expected[key], atol=1e-6, rtol=1e-5, msg=key)
    adapter = full / "adapter"
    assert json.loads((adapter / "model_spec.json").read_text())["quantization"] == "nf4"
    assert json.loads((adapter / "adapter_config.json").read_text())["peft_type"] == "LORA"


@pytest.mark.slow
def test_nf4_ddp_on_two_processes_matches_one_process_with_the_same_global_batch(full_run):
    ddp = full_run / "ddp"
    train(ddp, full_run / "data", *NF4, *STEPS, *DDP, "trainer.max_steps=4", "export=false", "data.batch_size=2")
    one, two = logged(full_run / "full"), logged(ddp)
    assert len(two["train/loss"]) == 4
    torch.testing.assert_close(torch.tensor(two["train/loss"]), torch.tensor(one["train/loss"]), rtol=LOSS_RTOL, atol=0)


def test_fsdp_and_full_finetunes_of_a_quantized_base_are_refused_before_any_work(tmp_path):
    result = subprocess.run(
        [sys.executable, "train.py", *NF4, "hardware=fsdp", "hardware.accelerator=cpu", "hardware.devices=2",
         "model.lora.enabled=false", f"hydra.run.dir={tmp_path / 'run'}", f"data.data_dir={tmp_path / 'data'}"],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )
    output = result.stderr + result.stdout
    assert result.returncode != 0
    assert "hardware.strategy=fsdp cannot shard a quantized base" in output and "hardware=ddp" in output
    assert "model.lora.enabled=false trains every weight" in output
    assert not (tmp_path / "data").exists()  # nothing prepared: the check precedes any work
