"""Tier 3: distributed runs of `python train.py` on CPU (gloo), always as subprocesses.

- 2-process DDP matches one process with the same global batch (per-step training loss, validation
  loss and generated-answer metrics), with one run dir and one adapter;
- two "nodes" launched by torchrun, or started as SLURM tasks, on 127.0.0.1 share one run dir named by
  rank 0's start time;
- FSDP2 on 2 processes trains, exports the gathered LoRA weights and resumes from its sharded checkpoint;
- Hydra multirun gives every job its own dir and W&B run, and refuses multi-process strategies early.
"""

from __future__ import annotations

import csv
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from test_train_e2e import REPO, SMALL, train

pytestmark = pytest.mark.e2e

# One epoch of the 48 training products in 6 steps of 8 (one process) or 2 x 4 (two ranks).
EPOCH = ["trainer.max_steps=6", "trainer.val_check_interval=6", "trainer.log_every_n_steps=1", "logger=csv",
         "test=false", "checkpoint.every_n_train_steps=6"]
DDP = ["hardware=ddp", "hardware.accelerator=cpu", "hardware.devices=2"]
# Float32 on CPU: the two runs differ only by the order of sums (gradients all-reduced from two halves
# vs summed over one batch): measured <= 1e-7 relative on the losses of this run; 1e-5 leaves room.
LOSS_RTOL = 1e-5
# Plain SGD without clipping: the update is proportional to the gradient, so a loss scaled wrongly across
# ranks (say, without its world-size factor: half the gradient on 2 ranks) shows as LoRA B weights (zero at
# the start) off by that factor. AdamW divides the scale out and clipping caps it, hiding such a bug.
SGD = ["optimizer=sgd", "optimizer.lr=0.05", "optimizer.momentum=0.0", "hardware.gradient_clip_val=null"]


def logged(run: Path) -> dict[str, list[float]]:
    """{metric: values in logged order} from the CSV logger."""
    with open(run / "csv" / "metrics.csv") as handle:
        rows = list(csv.DictReader(handle))
    series: dict[str, list[float]] = {}
    for row in rows:
        for key, value in row.items():
            if value not in ("", None) and key not in ("epoch", "step"):
                series.setdefault(key, []).append(float(value))
    return series


@pytest.mark.slow
def test_two_process_ddp_matches_one_process_with_the_same_global_batch(tmp_path):
    data = tmp_path / "data"
    single, ddp = tmp_path / "single", tmp_path / "ddp"
    train(single, data, *EPOCH, *SGD, "data.batch_size=8")
    output = train(ddp, data, *EPOCH, *DDP, *SGD, "data.batch_size=4")
    assert output.count("threads: 1 per rank x 2 ranks of ") == 2  # each rank applies hardware.threads=1
    one, two = logged(single), logged(ddp)
    assert len(one["train/loss"]) == len(two["train/loss"]) == 6
    torch.testing.assert_close(torch.tensor(two["train/loss"]), torch.tensor(one["train/loss"]), rtol=LOSS_RTOL, atol=0)
    torch.testing.assert_close(torch.tensor(two["val/loss"]), torch.tensor(one["val/loss"]), rtol=LOSS_RTOL, atol=0)
    # Greedy answers of (numerically) the same weights: the same text for every validation product, so
    # every generated-answer metric is identical.
    answers = [list(csv.DictReader(open(run / "predictions" / "val_step000006.csv"))) for run in (single, ddp)]
    assert len(answers[0]) == 8 and answers[1] == answers[0]
    for key in ("val/count", "val/price_mape", "val/category_accuracy", "val/title_similarity", "val/parse_rate"):
        torch.testing.assert_close(torch.tensor(two[key]), torch.tensor(one[key]), equal_nan=True, rtol=0, atol=0)
    assert two["val/count"] == [8.0]  # every validation product scored once, none twice (8 = 2 ranks x 4)
    # One run dir holding both ranks (Lightning's launcher passes rank 0's dir to rank 1), one adapter.
    assert (ddp / "train_ddp_process_1.log").is_file() and len(list(ddp.glob("**/.hydra"))) == 1
    assert len(list(ddp.glob("**/adapter_model.safetensors"))) == 1
    assert "run dir: " + str(ddp) in output
    # The trained weights agree too: LoRA B started at zero, so it is the sum of the SGD updates
    adapters = [load_file(run / "adapter" / "adapter_model.safetensors") for run in (single, ddp)]
    assert adapters[0].keys() == adapters[1].keys()
    trained_b = [key for key in adapters[0] if "lora_B" in key]
    assert trained_b and all(adapters[0][key].abs().max() > 0 for key in trained_b)
    for key in adapters[0]:
        torch.testing.assert_close(adapters[1][key], adapters[0][key], rtol=1e-4, atol=1e-7, msg=key)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def node_commands(launcher: str, tmp_path: Path) -> list[tuple[list[str], dict]]:
    """(argv, environment) of the two nodes: two torchrun launches, or the two tasks srun would start
    (the SLURM variables srun sets for `--nodes=2 --ntasks-per-node=1`)."""
    port = free_port()
    base = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true"}
    for variable in [v for v in base if v.startswith(("SLURM_", "TORCHELASTIC_"))]:
        base.pop(variable)
    arguments = [str(REPO / "train.py"), f"data.data_dir={tmp_path / 'data'}", *SMALL, "hardware=multinode",
                 "hardware.accelerator=cpu", "hardware.devices=1", "hardware.precision=32-true",
                 "trainer.max_steps=2", "trainer.val_check_interval=2", "test=false", "logger=none",
                 # LoRA in the CLIP tower too: DDP (find_unused_parameters=false) must find a gradient for
                 # every trainable weight, which holds because the unused last CLIP layer gets no adapter
                 "model.lora.vision=true", "model.lora.modules_to_save=[lm_head]"]
    if launcher == "torchrun":
        command = [sys.executable, "-m", "torch.distributed.run", "--nnodes=2", "--nproc-per-node=1",
                   "--master-addr=127.0.0.1", f"--master-port={port}"]
        return [([*command, f"--node-rank={node}", *arguments], base) for node in (0, 1)]
    slurm = {"SLURM_JOB_ID": "4242", "SLURM_JOB_NAME": "phi3v", "SLURM_NTASKS": "2", "SLURM_NTASKS_PER_NODE": "1",
             "SLURM_NNODES": "2", "SLURM_NODELIST": "127.0.0.1", "SLURM_LOCALID": "0", "MASTER_PORT": str(port)}
    return [([sys.executable, *arguments], {**base, **slurm, "SLURM_PROCID": str(node), "SLURM_NODEID": str(node)})
            for node in (0, 1)]


@pytest.mark.slow
@pytest.mark.parametrize("launcher", ["torchrun", "slurm"])
def test_two_nodes_launched_externally_share_one_run_dir(launcher, tmp_path):
    """Two nodes of one process each, started by torchrun (--nnodes=2) or as SLURM tasks, on 127.0.0.1.
    Node 1 starts later, so run dirs named by each process's own clock would differ."""
    work = tmp_path / "work"
    work.mkdir()
    nodes = []
    for command, environment in node_commands(launcher, tmp_path):
        nodes.append(subprocess.Popen(command, cwd=work, env=environment, stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT, text=True))
        time.sleep(2.5)
    outputs = [node.communicate(timeout=600)[0] for node in nodes]
    for node, output in zip(nodes, outputs):
        assert node.returncode == 0, output[-4000:]
    runs = [p.parent for p in (work / "outputs").glob("*/*/.hydra")]
    assert len(runs) == 1, sorted(str(p) for p in (work / "outputs").rglob("*"))
    assert len([p for p in (work / "outputs").glob("*/*") if p.is_dir()]) == 1  # no second run dir
    run = runs[0]
    assert (run / "train_rank_1.log").is_file()  # rank 1 logged into rank 0's run dir
    assert (run / "adapter" / "adapter_model.safetensors").is_file() and (run / "splits.json").is_file()


def dcp_state(checkpoint_dir: Path, target: Path) -> dict:
    """A sharded (FSDP) checkpoint folder as one plain dict (via the file `target`), read without any
    process group."""
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    dcp_to_torch_save(checkpoint_dir, target)
    return torch.load(target, weights_only=False)


@pytest.mark.slow
def test_fsdp_on_two_processes_trains_exports_the_gathered_adapter_and_resumes(tmp_path):
    data, run = tmp_path / "data", tmp_path / "fsdp"
    # bf16-mixed: FSDP gathers weights in bf16 (MixedPrecisionPolicy), reduces gradients in fp32
    fsdp = ["hardware=fsdp", "hardware.accelerator=cpu", "hardware.devices=2", "hardware.precision=bf16-mixed",
            "model.spec.activation_checkpointing=true", "data.batch_size=2", "logger=none", "test=false",
            "checkpoint.every_n_train_steps=2", "trainer.val_check_interval=4"]
    train(run, data, *fsdp, "trainer.max_steps=4")
    last = run / "checkpoints" / "last.ckpt"
    assert last.is_dir() and len(list(last.glob("*.distcp"))) == 2  # one shard file per rank
    saved = dcp_state(last, tmp_path / "step4.pt")["state_dict"]
    assert saved and all("lora_" in k or "modules_to_save" in k for k in saved)  # trainable weights only
    # The adapter holds exactly the LoRA weights of the final step, gathered whole from both ranks.
    adapter = load_file(run / "adapter" / "adapter_model.safetensors")
    lora = {k.removeprefix("model.").replace(".default.", "."): v for k, v in saved.items() if "lora_" in k}
    assert lora and {k for k in adapter if "lora_" in k} == set(lora)
    for key, value in lora.items():
        assert torch.equal(adapter[key], value), key
        assert adapter[key].abs().sum() > 0 or "lora_B" in key
    assert any(adapter[k].abs().sum() > 0 for k in adapter if "lora_B" in k)  # trained, not the zero init
    # Resume from the run dir: continues at step 4 and finishes at step 6 with new weights; then the
    # test split is evaluated by generation on the sharded model (ranks step in sync) and gathered.
    output = train(run, data, *fsdp, "trainer.max_steps=6", f"resume={run}", "test=true")
    resumed = dcp_state(last, tmp_path / "step6.pt")
    assert torch.load(last / "meta.pt", weights_only=False)["global_step"] == 6
    assert any(not torch.equal(resumed["state_dict"][k], saved[k]) for k in saved)
    assert "Restoring states from the checkpoint path" in output or "Restored all states" in output
    assert "\ntest: 8 answers, parse rate " in output  # the summary of the test split, on rank 0
    tested = list(csv.DictReader(open(run / "predictions" / "test.csv")))
    assert len(tested) == 8  # the whole test split, each product once


def test_multirun_refuses_multi_process_strategies_before_any_work(tmp_path):
    result = subprocess.run(
        [sys.executable, "train.py", "-m", *DDP, "optimizer.lr=1e-4,2e-4", f"hydra.sweep.dir={tmp_path}"],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode != 0
    assert "cannot run under Hydra multirun" in result.stderr + result.stdout
    assert "wandb agent" in result.stderr + result.stdout


@pytest.mark.slow
def test_multirun_jobs_each_get_their_own_dir_and_wandb_run(tmp_path):
    sweep = tmp_path / "sweep"
    command = [sys.executable, "train.py", "-m", f"hydra.sweep.dir={sweep}", f"data.data_dir={tmp_path / 'data'}",
               *SMALL, "trainer.max_steps=2", "trainer.val_check_interval=2", "test=false", "optimizer.lr=1e-3,2e-3"]
    environment = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true"}
    environment.pop("WANDB_API_KEY", None)
    result = subprocess.run(command, cwd=REPO, env=environment, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    runs = [sweep / "0", sweep / "1"]
    for job in runs:
        assert (job / "adapter" / "adapter_model.safetensors").is_file() and (job / ".hydra").is_dir()
    offline = [list((job / "wandb").glob("offline-run-*")) for job in runs]
    assert all(len(found) == 1 for found in offline)  # each job its own W&B run, in its own dir
    assert offline[0][0].name.split("-")[-1] != offline[1][0].name.split("-")[-1]
