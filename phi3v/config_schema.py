"""The schema of `conf/`: every key typed, so Hydra rejects a typo or a wrong type at composition with a
message naming the key (`Key 'rr' not in 'LoraSpec'`, `Value 'abc' of type 'str' could not be converted to
Float ... full_key: optimizer.lr`).

A node that configures one of our parts is typed by the frozen dataclass that part takes, registered as
it is: `model.spec` is `ModelSpec`, `model.lora` `LoraSpec`, `data` `DataSpec`, `scheduler`
`WarmupSchedule`, `hardware` `HardwareSpec`, `evaluation` `EvalSpec`. The schema *is* the class, so a key
is added by adding a field to it (type and default stated once), and the entry points turn a composed
node into that class with `OmegaConf.to_object`. The modules defining them import no torch: a typo is
answered in about a second.

Written here are only the schemas of what no class of ours takes: the top level of conf/train.yaml,
`trainer` (Lightning Trainer arguments) and `checkpoint` (their values live in train.yaml alone), and
the optimizers (torch's classes, with torch's defaults: tests/test_config.py compares them with torch's
signatures). Ranges and choices (`optimizer.lr > 0`, `checkpoint.mode: min | max`) are checked by
`check_config` (config_checks.py) right after composition. Entry points call `register_schemas()`
before Hydra composes the config.
"""

from __future__ import annotations

import dataclasses
from typing import Any, TypeVar

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf

from phi3v.data.spec import DataSpec
from phi3v.modeling.model_spec import ModelSpec
from phi3v.training.schedules import WarmupSchedule
from phi3v.training.specs import EvalSpec, HardwareSpec, LoraSpec

T = TypeVar("T")


@dataclasses.dataclass
class ModelSchema:
    spec: ModelSpec = dataclasses.field(default_factory=ModelSpec)
    lora: LoraSpec = dataclasses.field(default_factory=LoraSpec)


@dataclasses.dataclass
class AdamWSchema:  # torch.optim.AdamW's arguments and defaults (train.py passes the parameters)
    _target_: str = "torch.optim.AdamW"
    _partial_: bool = True
    lr: float = 1e-3
    betas: list[float] = dataclasses.field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8
    weight_decay: float = 1e-2
    amsgrad: bool = False
    foreach: bool | None = None  # None: torch picks (the for-each kernels on GPU, a loop on CPU)
    fused: bool | None = None  # true: one fused kernel per step (CPU and GPU; the tiny demo uses it)


@dataclasses.dataclass
class SGDSchema:  # torch.optim.SGD's arguments and defaults (train.py passes the parameters)
    _target_: str = "torch.optim.SGD"
    _partial_: bool = True
    lr: float = 1e-3
    momentum: float = 0.0
    dampening: float = 0.0
    weight_decay: float = 0.0
    nesterov: bool = False
    foreach: bool | None = None  # as AdamW's
    fused: bool | None = None


@dataclasses.dataclass
class TrainerSchema:  # arguments of lightning.Trainer that runs may set (hardware.* holds the others)
    max_epochs: int = MISSING
    max_steps: int = MISSING
    val_check_interval: Any = MISSING  # a fraction of an epoch (float) or a number of steps (int)
    check_val_every_n_epoch: int | None = MISSING
    limit_train_batches: Any = MISSING  # a fraction (float) or a number of batches (int)
    limit_val_batches: Any = MISSING
    limit_test_batches: Any = MISSING
    num_sanity_val_steps: int = MISSING
    log_every_n_steps: int = MISSING


@dataclasses.dataclass
class CheckpointSchema:
    monitor: str | None = MISSING  # null: no best.ckpt
    mode: str = MISSING  # min | max
    every_n_train_steps: int = MISSING


@dataclasses.dataclass
class TrainSchema:
    """The top level of conf/train.yaml; the groups bring their own schemas."""

    model: ModelSchema = dataclasses.field(default_factory=ModelSchema)
    data: Any = None
    optimizer: Any = None
    scheduler: Any = None
    hardware: Any = None
    logger: Any = None
    seed: int = MISSING
    resume: str | None = MISSING
    test: bool = MISSING
    export: bool = MISSING
    trainer: TrainerSchema = dataclasses.field(default_factory=TrainerSchema)
    checkpoint: CheckpointSchema = dataclasses.field(default_factory=CheckpointSchema)
    evaluation: EvalSpec = dataclasses.field(default_factory=EvalSpec)


def schema(node_type: type) -> DictConfig:
    """The structured config of a dataclass, writable: OmegaConf marks the node of a frozen dataclass
    read-only, and the YAML files and the command line must set its values (`to_object` still builds
    the frozen class)."""
    return _writable(OmegaConf.structured(node_type))


def _writable(node: DictConfig) -> DictConfig:
    OmegaConf.set_readonly(node, None)  # inherit: nothing up the tree is read-only
    for key in node:
        child = None if OmegaConf.is_missing(node, key) else node[key]
        if isinstance(child, DictConfig):
            _writable(child)
    return node


def typed(node_type: type[T], values: Any) -> T:
    """`values` (a mapping or config node, e.g. a run's recorded `data`) checked against `node_type`'s
    schema and built into it: a key it lacks or a wrong type raises naming the key."""
    return OmegaConf.to_object(OmegaConf.merge(schema(node_type), values))


def register_schemas() -> None:
    """Store the schemas (YAML files list `<group>_schema` first in their defaults) and the resolvers
    that name run dirs (one start time for all ranks, see training/launch.py; `resume=` continues in
    the run dir it names), and `not_mixed` (whether a `hardware.precision` is not an autocast one)."""
    from phi3v.training.launch import launch_time, resume_subdir, run_dir_for  # light: no torch at import

    OmegaConf.register_new_resolver("launch_time", lambda pattern: launch_time().strftime(pattern), replace=True)
    OmegaConf.register_new_resolver("run_dir", run_dir_for, replace=True)
    OmegaConf.register_new_resolver("resume_subdir", resume_subdir, replace=True)
    OmegaConf.register_new_resolver("not_mixed", lambda precision: not str(precision).endswith("-mixed"), replace=True)
    store = ConfigStore.instance()
    store.store(name="train_schema", node=schema(TrainSchema))
    store.store(group="model", name="model_schema", node=schema(ModelSchema))
    store.store(group="data", name="data_schema", node=schema(DataSpec))
    store.store(group="hardware", name="hardware_schema", node=schema(HardwareSpec))
    store.store(group="optimizer", name="adamw_schema", node=schema(AdamWSchema))
    store.store(group="optimizer", name="sgd_schema", node=schema(SGDSchema))
    store.store(group="scheduler", name="scheduler_schema", node=schema(WarmupSchedule))
