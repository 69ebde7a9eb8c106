"""Rank-aware side effects of a training run: plots, prediction tables, last and SIGTERM checkpoints,
the trained-batch count a resume starts from, the threads each rank computes with."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities import rank_zero_only
from lightning.pytorch.utilities.exceptions import SIGTERMException

from phi3v.inference import write_predictions

from .reporting import number_scatter, wandb_prediction_table
from .threads import INTERVAL_S, LoadMeter, start_line, threads_for

log = logging.getLogger(__name__)


class EvaluationReport(L.Callback):
    """After each evaluation, on rank 0, from the records of all ranks (`module.results`): every answer in
    `predictions/<split>[_step<n>].csv` (`val_step<n>` during training, `val` for the validation of
    the whole split after it; one column group per field of `module.task`), a predicted-vs-true scatter
    per number field (`plots/<name>_<field>_scatter.png`, and to W&B as `<split>/<field>_scatter`) and a
    W&B table of the first `evaluation.table_samples` samples (image, target, prediction, each field's
    parsed and true value and check)."""

    def __init__(self, run_dir: str | Path):
        self.plots = Path(run_dir) / "plots"
        self.predictions = Path(run_dir) / "predictions"

    def on_validation_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        if not trainer.sanity_checking:
            fitting = trainer.state.fn == TrainerFn.FITTING
            self._report(trainer, module, "val", f"val_step{trainer.global_step:06d}" if fitting else "val")

    def on_test_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        self._report(trainer, module, "test", "test")

    @rank_zero_only
    def _report(self, trainer: L.Trainer, module: L.LightningModule, split: str, name: str) -> None:
        answers = [record.answer for record in module.results.records[split]]
        if not answers:
            return
        self.plots.mkdir(parents=True, exist_ok=True)
        self.predictions.mkdir(parents=True, exist_ok=True)
        task, title = module.task, f"{split} step {trainer.global_step}"
        plots = {
            field.name: number_scatter([a.truth[field.name] for a in answers],
                                       [a.parsed.get(field.name) for a in answers],
                                       self.plots / f"{name}_{field.name}_scatter.png", title=title, name=field.name)
            for field in task.fields if field.numeric
        }
        rows = [answer.row(task) for answer in answers]
        write_predictions(rows, self.predictions / f"{name}.csv", task)
        rows = rows[: module.evaluation.table_samples]
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                import wandb

                media = {
                    f"{split}/predictions": wandb_prediction_table(rows, task),
                    **{f"{split}/{field}_scatter": wandb.Image(str(path)) for field, path in plots.items()},
                }
                # Lightning's WandbLogger plots everything against "trainer/global_step" and lets W&B count its
                # own steps (one per log call); an explicit step= below that count is dropped with a warning.
                logger.experiment.log({**media, "trainer/global_step": trainer.global_step})


class TrainedBatches(L.Callback):
    """Tells the datamodule how many train batches of the epoch were trained, for its resumable state
    (`ProductDataModule.record_trained`). First in the callback list: checkpoints written in the same
    hook (`LastCheckpoint`, `every_n_train_steps`) must see this batch counted. Lightning's `batch_idx`
    continues across a mid-epoch resume, so `batch_idx + 1` is the epoch's count."""

    def on_train_batch_end(self, trainer: L.Trainer, module: L.LightningModule, outputs, batch, batch_idx: int) -> None:
        record = getattr(trainer.datamodule, "record_trained", None)
        if record is not None:
            record(batch_idx + 1)

    def on_train_epoch_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        record = getattr(trainer.datamodule, "record_trained", None)
        if record is not None:
            record(None)  # no batch of this epoch has ended: the sampler's count (0, or a resume's) holds


class SigtermCheckpoint(L.Callback):
    """On SIGTERM (preemption, `kill`), Lightning finishes the batch and raises; save `last.ckpt` first."""

    def __init__(self, checkpoint_dir: str | Path):
        self.path = Path(checkpoint_dir) / "last.ckpt"

    def on_exception(self, trainer: L.Trainer, module: L.LightningModule, exception: BaseException) -> None:
        if isinstance(exception, SIGTERMException):
            trainer.save_checkpoint(self.path, weights_only=False)
            if trainer.is_global_zero:
                log.warning("SIGTERM: saved %s at step %d; resume with resume=%s", self.path, trainer.global_step,
                            self.path.parent.parent)


class LastCheckpoint(L.Callback):
    """`last.ckpt` after every validation and when training ends (besides `checkpoint.every_n_train_steps`),
    so `resume=` always continues from the latest state, also of a finished or short run."""

    def __init__(self, checkpoint_dir: str | Path):
        self.path = Path(checkpoint_dir) / "last.ckpt"

    def on_validation_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        if not trainer.sanity_checking:
            trainer.save_checkpoint(self.path, weights_only=False)

    def on_train_batch_end(self, trainer: L.Trainer, module: L.LightningModule, *args) -> None:
        # Saved here, not in on_train_end: there Lightning already counts the epoch as completed, and a
        # run resumed with a larger trainer.max_steps would start a new epoch (or stop at max_epochs).
        if _stops_at_max_steps(trainer):
            trainer.save_checkpoint(self.path, weights_only=False)

    def on_train_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        if not _stops_at_max_steps(trainer):  # max_epochs reached or stopped early: the state as it ends
            trainer.save_checkpoint(self.path, weights_only=False)


def _stops_at_max_steps(trainer: L.Trainer) -> bool:
    return 0 < trainer.max_steps <= trainer.global_step


class ThreadGovernor(L.Callback):
    """hardware.threads on every rank (phi3v.training.threads): `fixed` threads, or (None: auto) the free
    cores split between this machine's ranks, measured again every `interval_s` of wall time while
    training and evaluating. The first choice and every change are logged, once each."""

    def __init__(self, fixed: int | None, meter: LoadMeter, interval_s: float = INTERVAL_S):
        self.fixed, self.meter, self.interval_s = fixed, meter, interval_s
        self.threads: int | None = None
        self.ranks = 1

    def setup(self, trainer: L.Trainer, module: L.LightningModule, stage: str) -> None:
        # Runs after Lightning's launcher, which sets its own count on DDP ranks, and again before
        # trainer.validate/test: the count is chosen once, applied each time.
        if self.threads is None:
            self.ranks = trainer.num_devices  # the processes of this machine
            busy = 0.0 if self.fixed is not None else self.meter.read()
            self.threads = threads_for(self.meter.free_cores(busy), self.ranks) if self.fixed is None else self.fixed
            log.info(start_line(self.threads, self.ranks, self.meter.free_cores(), self.fixed, busy, os.environ))
        torch.set_num_threads(self.threads)

    def on_train_batch_end(self, trainer: L.Trainer, module: L.LightningModule, *args) -> None:
        self.follow_load()

    def on_validation_batch_end(self, trainer: L.Trainer, module: L.LightningModule, *args) -> None:
        self.follow_load()

    def on_test_batch_end(self, trainer: L.Trainer, module: L.LightningModule, *args) -> None:
        self.follow_load()

    def follow_load(self) -> None:
        """With auto threads, once `interval_s` has passed: the count for the load of the window since."""
        if self.fixed is not None or self.meter.seconds_since_reading() < self.interval_s:
            return
        seconds = self.meter.seconds_since_reading()
        busy = self.meter.read()
        threads = threads_for(self.meter.free_cores(busy), self.ranks)
        if threads != self.threads:
            log.info("threads: %d -> %d (%.1f CPUs busy elsewhere over the last %.0f s)", self.threads, threads,
                     busy, seconds)
            self.threads = threads
            torch.set_num_threads(threads)
