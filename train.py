"""Train, evaluate and export: `python train.py [model=phi3v] [data=burberry] [key=value ...]`.

An entry point (with phi3v.predict, phi3v.export and phi3v.prepare): the only places that build objects
from config. The nodes of our parts are typed by the specs those parts take (phi3v/config_schema.py), and
`OmegaConf.to_object` turns each into its spec; `instantiate` builds what is someone else's (the torch
optimizer, the logger). Everything below gets typed objects. torch, Lightning and transformers are imported
inside the functions, after the config is composed and checked: a typo is answered in about a second.
"""

from __future__ import annotations

import logging
import math
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from phi3v.cli import start
from phi3v.config_checks import ConfigError, check_config
from phi3v.training.launch import join_external_launch, run_dir_for
from phi3v.training.threads import LoadMeter, parse_threads, set_openmp_wait

if TYPE_CHECKING:
    import lightning as L

    from phi3v.data.datamodule import ProductDataModule
    from phi3v.modeling import Phi3VProcessor
    from phi3v.modeling.model_spec import ModelSpec
    from phi3v.training.module import Phi3VLitModule
    from phi3v.training.specs import ShardingSpec

log = logging.getLogger("phi3v.train")


def resolve_resume(resume: str | None) -> tuple[str | None, Path | None]:
    """(checkpoint path, run dir to continue in) from `resume=` (a run dir or a .ckpt file). The run
    dir is the one Hydra was pointed at (train.yaml: hydra.run.dir), so no new one is created."""
    if resume is None:
        return None, None
    from phi3v.training.strategies import is_checkpoint

    path = Path(resume)
    if path.is_dir() and not is_checkpoint(path):  # a run dir, not the folder of a sharded checkpoint
        path = path / "checkpoints" / "last.ckpt"
    if not is_checkpoint(path):
        raise ConfigError(f"resume={resume}: no checkpoint at {path} (a run dir with checkpoints/last.ckpt, "
                          "or a .ckpt file)")
    fresh = run_dir_for(str(path), "")
    return str(path), Path(fresh) if fresh else None


@dataclass(frozen=True)
class Launch:
    """What the config implies for the processes of a run, worked out once before any work: how many
    train together, and how many loader batches each accumulates per optimizer step."""

    world_size: int
    accumulate_grad_batches: int


def launch_plan(cfg: DictConfig) -> Launch:
    """The run's world (hardware.devices x num_nodes, or a torchrun/srun launch's) and its accumulation:
    hardware.accumulate_grad_batches, or derived from data.global_batch_size when that is set (raises
    ValueError, saying what to set, when it does not divide)."""
    from phi3v.training.hardware import world_size

    hardware, data = OmegaConf.to_object(cfg.hardware), OmegaConf.to_object(cfg.data)
    world = world_size(hardware.accelerator, hardware.devices, hardware.num_nodes)
    return Launch(world, data.accumulation(world, hardware.num_nodes, hardware.accumulate_grad_batches))


def build_trainer(cfg: DictConfig, run_dir: Path, logger, launch: Launch, meter: LoadMeter | None = None) -> L.Trainer:
    """The Trainer of `cfg`; `meter` measures the load for hardware.threads=auto since the run started."""
    import lightning as L
    from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint, TQDMProgressBar

    from phi3v.training.callbacks import (
        EvaluationReport,
        LastCheckpoint,
        SigtermCheckpoint,
        ThreadGovernor,
        TrainedBatches,
    )
    from phi3v.training.strategies import build_strategy

    checkpoints = run_dir / "checkpoints"
    callbacks = [
        TrainedBatches(),  # first: the checkpoints below count the batch that just ended
        # enable_version_counter=False: a resumed run replaces best.ckpt instead of adding best-v1.ckpt
        ModelCheckpoint(dirpath=checkpoints, filename="best", monitor=cfg.checkpoint.monitor, mode=cfg.checkpoint.mode,
                        save_top_k=1, save_last=False, auto_insert_metric_name=False, enable_version_counter=False),
        ModelCheckpoint(dirpath=checkpoints, filename="last", every_n_train_steps=cfg.checkpoint.every_n_train_steps,
                        save_top_k=1, enable_version_counter=False),
        EvaluationReport(run_dir),
        LastCheckpoint(checkpoints),  # also at every validation (after its report) and at the end of training
        SigtermCheckpoint(checkpoints),
        TQDMProgressBar(refresh_rate=cfg.trainer.log_every_n_steps),  # plain lines in logs and CI, unlike rich
        ThreadGovernor(parse_threads(cfg.hardware.threads), meter or LoadMeter.start()),
    ]
    if logger:
        callbacks.append(LearningRateMonitor(logging_interval="step"))
    hardware = OmegaConf.to_object(cfg.hardware)
    return L.Trainer(
        default_root_dir=run_dir, logger=logger or False, callbacks=callbacks,
        strategy=build_strategy(hardware.strategy, hardware.ddp, hardware.timeout_minutes),
        accelerator=hardware.accelerator, devices=hardware.devices, num_nodes=hardware.num_nodes,
        precision=hardware.precision, accumulate_grad_batches=launch.accumulate_grad_batches,
        gradient_clip_val=hardware.gradient_clip_val,
        use_distributed_sampler=False,  # our samplers shard by rank themselves
        inference_mode=False,  # evaluation under no_grad on every backend (FSDP2 cannot gather under inference mode)
        **OmegaConf.to_container(cfg.trainer, resolve=True),
    )


def sharding_spec(cfg: DictConfig) -> ShardingSpec:
    """hardware.fsdp, with the gather dtype following hardware.precision unless set explicitly."""
    from dataclasses import replace

    from phi3v.training.hardware import half_dtype

    spec: ShardingSpec = OmegaConf.to_object(cfg.hardware.fsdp)
    if spec.param_dtype is None:
        spec = replace(spec, param_dtype=half_dtype(cfg.hardware.precision))
    return spec


def check_launch(cfg: DictConfig) -> Launch:
    """Fail before any work on combinations that cannot run; the launch plan of those that can."""
    from phi3v.modeling.kernels import kernels_problem
    from phi3v.training.hardware import check_precision
    from phi3v.training.quantized import quantized_run_problems

    check_precision(cfg.hardware.precision, cfg.model.spec.dtype)
    launch = launch_plan(cfg)  # raises when data.global_batch_size does not divide
    if HydraConfig.get().mode == RunMode.MULTIRUN and cfg.hardware.strategy != "auto":
        raise SystemExit(
            f"hardware.strategy={cfg.hardware.strategy} cannot run under Hydra multirun (-m): Lightning starts the "
            "other ranks by re-running this command, so each would start the whole sweep again. Use a W&B sweep "
            "(`wandb sweep sweep.yaml`, one `wandb agent` per GPU group) or run the jobs one after another."
        )
    problems = quantized_run_problems(cfg.model.spec.quantization, cfg.hardware.strategy, cfg.model.lora.enabled)
    kernels = kernels_problem(cfg.model.spec.kernels)  # e.g. liger without a CUDA GPU
    if kernels:
        problems.append(kernels)
    if problems:
        raise SystemExit("\n".join(problems))
    return launch


@hydra.main(config_path="conf", config_name="train", version_base="1.3")
def main(cfg: DictConfig) -> float | None:
    try:
        check_config(cfg)
        launch = check_launch(cfg)
    except ConfigError as problem:
        raise SystemExit(f"error: {problem}") from None
    return train(cfg, Path(HydraConfig.get().runtime.output_dir), launch)


def train(cfg: DictConfig, run_dir: Path, launch: Launch) -> float | None:
    meter = LoadMeter.start()  # first: the imports below give hardware.threads=auto its first window
    from phi3v.console import lightning_logs_through_root, quiet_third_party

    quiet_third_party()  # first: some libraries warn while being imported
    try:
        ckpt_path, _ = resolve_resume(cfg.resume)
    except ConfigError as problem:
        raise SystemExit(f"error: {problem}") from None
    import lightning as L
    from lightning.pytorch.utilities import rank_zero_only

    from phi3v.data.datamodule import ProductDataModule
    from phi3v.data.splits import SPLITS
    from phi3v.modeling.model_spec import load_processor
    from phi3v.training.launch import prepare_once
    from phi3v.training.metrics import split_baselines
    from phi3v.training.module import Phi3VLitModule
    from phi3v.training.sharding import gathered_adapter_state

    lightning_logs_through_root()
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    logging.getLogger("phi3v").setLevel(logging.INFO)

    spec, lora = OmegaConf.to_object(cfg.model.spec), OmegaConf.to_object(cfg.model.lora)
    processor = load_processor(spec)
    # rank 0 records the splits; every rank computes the same ones
    splits_dir = run_dir if rank_zero_only.rank == 0 else None
    datamodule = ProductDataModule(OmegaConf.to_object(cfg.data), output_dir=splits_dir)
    datamodule.connect(processor)
    prepare_once(datamodule.prepare_data)
    datamodule.setup("fit")

    module = Phi3VLitModule(
        spec=spec, lora=lora, optimizer=instantiate(cfg.optimizer), scheduler=OmegaConf.to_object(cfg.scheduler),
        processor=processor, task=datamodule.task, evaluation=OmegaConf.to_object(cfg.evaluation),
        baseline_scores=split_baselines(datamodule.task, {split: datamodule.truth(split) for split in SPLITS}),
        sharding=sharding_spec(cfg),
    )
    logger = instantiate(cfg.logger, save_dir=str(run_dir)) if cfg.get("logger") else None
    if logger is not None:
        logger.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))  # a plain dict, no objects
    trainer = build_trainer(cfg, run_dir, logger, launch, meter)
    trained, finished = None, False
    try:
        trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)
        # verbose=False: the summary at the end replaces Lightning's table of every logged metric
        if datamodule.val_subset() is not None and cfg.trainer.limit_val_batches and not trainer.interrupted:
            trainer.validate(module, datamodule=datamodule, ckpt_path=None, verbose=False)  # the whole split
        objective = trainer.callback_metrics.get(cfg.checkpoint.monitor)  # before test() clears the metrics
        if cfg.test and len(datamodule.split_products("test")):
            trainer.test(module, datamodule=datamodule, ckpt_path=None, verbose=False)
        # Under FSDP every rank holds a shard of the trained weights: all take part in gathering them.
        trained = gathered_adapter_state(module.model) if cfg.export else None
        finished = True
    finally:
        run = RunEnd(cfg, trainer, module, datamodule, processor, spec, run_dir, trained)
        rank_zero_only(end_of_run)(run, finished)
    return None if objective is None or not math.isfinite(float(objective)) else float(objective)


@dataclass(frozen=True)
class RunEnd:
    """What the end of a run works with; `trained` is the gathered adapter state (None: no export)."""

    cfg: DictConfig
    trainer: L.Trainer
    module: Phi3VLitModule
    datamodule: ProductDataModule
    processor: Phi3VProcessor
    spec: ModelSpec
    run_dir: Path
    trained: dict | None


def end_of_run(run: RunEnd, finished: bool) -> None:
    """Rank zero's work after training (train() calls it on rank zero only): after a finished run the adapter
    export, its W&B artifacts and the summary; in every case the W&B run is closed, marked failed after an
    exception, so the next job of a multirun starts its own."""
    from phi3v.training.reporting import try_commands

    wandb_run = _wandb_run(run.trainer.logger)
    succeeded = False
    try:
        if finished:
            adapter = export(run, wandb_run) if run.cfg.export else None
            offline = Path(wandb_run.dir).parent if wandb_run is not None and wandb_run.offline else None
            commands = try_commands(adapter, offline, run.datamodule.most_photos())
            print("\n" + summary(run.module, commands))
            print(f"\nrun dir: {run.run_dir}")
            succeeded = True
    finally:
        if wandb_run is not None:
            wandb_run.finish(exit_code=0 if succeeded else 1)


def _wandb_run(logger):
    """The W&B run this job's logger started, if it started one (never starts one)."""
    from lightning.pytorch.loggers import WandbLogger

    if not isinstance(logger, WandbLogger):
        return None
    import wandb

    return wandb.run  # the process's current run: the logger's, created on its first use


def export(run: RunEnd, wandb_run) -> Path:
    """The adapter under <run>/adapter; with W&B, also the model and prediction artifacts (staged for
    `wandb sync` when offline)."""
    from phi3v.shipping.adapter import export_adapter
    from phi3v.shipping.artifacts import best_score, log_run_artifacts
    from phi3v.shipping.model_card import RunResults

    module, task = run.module, run.datamodule.task
    results = RunResults(dataset=str(run.cfg.data.source), scores=module.results.scores)  # for the model card
    out = export_adapter(module.model, run.processor, run.spec, task, run.run_dir / "adapter", run.trained, results)
    log.info("adapter written to %s", out)
    if wandb_run is not None:
        log_run_artifacts(wandb_run, out, run.run_dir / "predictions", run.spec, task, run.cfg.checkpoint.monitor,
                          run.cfg.checkpoint.mode, best_score(run.trainer), module.results.scores)
    return out


def summary(module: Phi3VLitModule, commands: list[str]) -> str:
    """Per evaluated split: the answers' metrics (a block per field of the task) against the baselines and a
    verdict; then the overall verdict and the commands to try the result."""
    from phi3v.training.reporting import run_summary

    return run_summary(module.results.splits(), module.task, commands)


if __name__ == "__main__":
    set_openmp_wait(os.environ)  # before anything imports torch (join_external_launch may): see threads.py
    sys.argv = join_external_launch(sys.argv)
    start(main)  # the typed schemas of conf/ first (typos and wrong types fail naming the key), then Hydra
