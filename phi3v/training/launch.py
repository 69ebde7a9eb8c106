"""Runs started by an external launcher (torchrun, SLURM's srun): one run directory for all ranks.

Hydra names the run directory after the time each process starts, so the ranks of a torchrun or
srun launch would each create their own (Lightning's own launcher for `hardware=ddp` on one machine
avoids this by passing the directory to the ranks it starts; external launchers cannot). Before
Hydra starts, the ranks open the process group, rank 0 broadcasts its start time, and every rank
names the run directory after it. Lightning then finds the process group initialised and uses it.
"""

from __future__ import annotations

import functools
import os
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from lightning.fabric.plugins.environments import ClusterEnvironment

# torch and Lightning are imported inside the functions that need them: train.py imports this module
# before composing the config, and a config typo must be answered without seconds of imports.
# Variables that torchrun and srun set; without any of them there is no external launch to join.
LAUNCHER_VARIABLES = ("TORCHELASTIC_RUN_ID", "SLURM_NTASKS", "SLURM_JOB_ID")
LAUNCH_TIME = "PHI3V_LAUNCH_TIME"  # ISO time shared by all ranks of a launch


@functools.cache
def process_start() -> datetime:
    """This process's start time: the time of the first call, the same at every call after it (every part
    of the run dir's name reads it, so they must agree)."""
    return datetime.now()


def launch_time() -> datetime:
    """When this run started: the shared time of an external launch, else this process's start."""
    shared = os.environ.get(LAUNCH_TIME)
    return datetime.fromisoformat(shared) if shared else process_start()


def run_dir_for(resume: str | None, fresh: str) -> str:
    """The run dir of this run (hydra.run.dir): the one `resume=` continues (a run dir, or a checkpoint
    in `<run dir>/checkpoints/`), so resuming writes into it and creates no new one; else `fresh`."""
    if not resume:
        return fresh
    path = Path(resume)
    if path.parent.name == "checkpoints":
        return str(path.parent.parent)
    if path.suffix == ".ckpt":  # a checkpoint kept elsewhere: the continued run gets a new dir
        return fresh
    return str(path)


def resume_subdir(resume: str | None, stamp: str) -> str:
    """Where Hydra records the config (hydra.output_subdir): `.hydra`, or for a run that continues an
    existing run dir `.hydra/resumed_<stamp>`, keeping the original run's record intact."""
    return f".hydra/resumed_{stamp}" if resume and run_dir_for(resume, "") else ".hydra"


def external_cluster() -> ClusterEnvironment | None:
    """The environment of a multi-process torchrun or srun launch, None otherwise (one process, or
    processes Lightning starts itself)."""
    if not any(name in os.environ for name in LAUNCHER_VARIABLES):
        return None
    from lightning.fabric.plugins.environments import SLURMEnvironment, TorchElasticEnvironment

    for kind in (TorchElasticEnvironment, SLURMEnvironment):
        if kind.detect():
            environment = kind()
            if environment.world_size() > 1:
                return environment
    return None


def join_external_launch(argv: list[str], timeout_minutes: int = 30) -> list[str]:
    """Under torchrun/srun with several ranks: open the process group, share rank 0's start time
    (see `launch_time`) and return `argv` plus the overrides that keep ranks > 0 from writing Hydra
    files of their own. Otherwise `argv` unchanged."""
    environment = external_cluster()
    if environment is None:
        return argv
    if any(arg in ("-m", "--multirun") for arg in argv):
        raise SystemExit(
            "Hydra multirun (-m) cannot run under torchrun/srun: every rank would run the whole sweep. "
            "Launch one run per job, or use a W&B sweep (sweep.yaml) with one agent per node group."
        )
    import torch
    import torch.distributed as dist

    rank = environment.global_rank()
    # gloo for the CPU objects exchanged here (and CPU runs); NCCL for the GPU collectives of training
    backend = "cpu:gloo,cuda:nccl" if torch.cuda.is_available() else "gloo"
    dist.init_process_group(
        backend, init_method=f"tcp://{environment.main_address}:{environment.main_port}", rank=rank,
        world_size=environment.world_size(), timeout=timedelta(minutes=timeout_minutes),
    )
    shared = [process_start().isoformat() if rank == 0 else None]
    dist.broadcast_object_list(shared, src=0)
    os.environ[LAUNCH_TIME] = shared[0]
    if rank == 0:
        return argv
    return [*argv, "hydra.output_subdir=null", f"hydra.job.name=train_rank_{rank}"]


def is_distributed() -> bool:
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def prepare_once(prepare) -> None:
    """Run the idempotent `prepare` (download, manifest) once per storage: global rank 0 first, then
    the first rank of every other node, which finds the work done on shared storage and redoes it on
    node-local storage. Ranks wait for each other, so none reads a half-written manifest."""
    if not is_distributed():
        prepare()
        return
    import torch.distributed as dist

    rank = dist.get_rank()
    local_rank = int(os.environ.get("LOCAL_RANK", os.environ.get("SLURM_LOCALID", "0")))
    if rank == 0:
        prepare()
    dist.barrier()
    if rank != 0 and local_rank == 0:
        prepare()
    dist.barrier()
