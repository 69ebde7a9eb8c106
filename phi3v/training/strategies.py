"""How a run spreads over processes: Lightning strategies from plain settings (conf/hardware).

  auto   one device (CPU or one GPU)
  ddp    data parallel: every rank holds the whole model, gradients are averaged (DDPStrategy)
  fsdp   fully sharded data parallel on PyTorch's FSDP2 (`fully_shard`) through Lightning's
         ModelParallelStrategy: weights, gradients and optimizer states sharded over all ranks;
         also runs on CPU with gloo
"""

from __future__ import annotations

import shutil
from datetime import timedelta
from pathlib import Path

import torch
from lightning.fabric.utilities.load import _METADATA_FILENAME
from lightning.pytorch.strategies import DDPStrategy, ModelParallelStrategy, Strategy

from .lora import trainable_parameter_names
from .specs import STRATEGIES, DDPSettings


def build_strategy(name: str, ddp: DDPSettings, timeout_minutes: int = 30) -> str | Strategy:
    """The Lightning strategy for `hardware.strategy`."""
    timeout = timedelta(minutes=timeout_minutes)
    if name == "auto":
        return "auto"
    if name == "ddp":
        return DDPStrategy(
            find_unused_parameters=ddp.find_unused_parameters,
            gradient_as_bucket_view=ddp.gradient_as_bucket_view,
            static_graph=ddp.static_graph,
            timeout=timeout,
        )
    if name == "fsdp":
        return FullyShardedStrategy(timeout=timeout)
    raise ValueError(f"hardware.strategy must be one of {STRATEGIES}, got {name!r} (use hardware=ddp or hardware=fsdp)")


class FullyShardedStrategy(ModelParallelStrategy):
    """FSDP2 over every process (a 1-D data-parallel mesh), with checkpoints of the trainable weights.

    The module shards itself in `configure_model` (see sharding.shard_model) using `device_mesh`.
    Checkpoints are PyTorch distributed checkpoints (a folder, one shard file per rank) holding only
    what the LightningModule keeps in `on_save_checkpoint` (the trainable weights); loading reads
    exactly those keys. A checkpoint is written to `<name>.partial` and renamed into place, so a
    crash during a save leaves the previous checkpoint intact.
    """

    def __init__(self, timeout: timedelta) -> None:
        super().__init__(data_parallel_size="auto", tensor_parallel_size=1, timeout=timeout)

    def setup_environment(self) -> None:
        # Lightning's "auto" would make the data-parallel size the node count; here it is every process.
        self._data_parallel_size = self.num_nodes * self.num_processes
        super().setup_environment()

    def save_checkpoint(self, checkpoint: dict, filepath, storage_options=None) -> None:
        path = Path(self.broadcast(str(filepath)))
        partial, previous = path.with_name(path.name + ".partial"), path.with_name(path.name + ".previous")
        if self.global_rank == 0 and partial.exists():
            shutil.rmtree(partial)
        self.barrier("checkpoint_partial_clean")
        super().save_checkpoint(checkpoint, partial, storage_options)
        self.barrier("checkpoint_written")
        if self.global_rank == 0:
            if path.is_dir():
                path.rename(previous)
            elif path.exists():
                path.unlink()
            partial.rename(path)
            shutil.rmtree(previous, ignore_errors=True)
        self.barrier("checkpoint_in_place")

    def load_checkpoint(self, checkpoint_path, weights_only: bool | None = None) -> dict:
        from torch.distributed.checkpoint import load
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            get_model_state_dict,
            get_optimizer_state_dict,
            set_model_state_dict,
            set_optimizer_state_dict,
        )

        path = Path(self.broadcast(str(checkpoint_path)))
        if not (path / _METADATA_FILENAME).is_file():
            raise FileNotFoundError(f"{path} is not an FSDP checkpoint folder (no {_METADATA_FILENAME}); resume= "
                                    "a checkpoint written by a hardware=fsdp run")
        trainable = set(trainable_parameter_names(self.lightning_module))
        weights = {k: v for k, v in get_model_state_dict(self.lightning_module).items() if k in trainable}
        load({"state_dict": weights}, checkpoint_id=path)  # fails naming any trainable key the folder lacks
        set_model_state_dict(self.lightning_module, weights, options=StateDictOptions(strict=False))
        for index, optimizer in enumerate(self.optimizers):
            key = f"optimizer_{index}"
            state = {key: get_optimizer_state_dict(self.lightning_module, optimizer)}
            load(state, checkpoint_id=path)
            set_optimizer_state_dict(self.lightning_module, optimizer, optim_state_dict=state[key])
        return torch.load(path / _METADATA_FILENAME, weights_only=weights_only)


def is_checkpoint(path: Path) -> bool:
    """A single-file checkpoint, or the folder of a sharded (FSDP) one."""
    return path.is_file() or (path.is_dir() and (path / _METADATA_FILENAME).is_file())
