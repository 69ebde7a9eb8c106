"""Phi3VLitModule: LoRA fine-tuning with evaluation by generation.

The model is built in `configure_model` (so sharded strategies never hold it whole on every rank);
only trainable parameters reach the optimizer and the checkpoints. Validation computes the
teacher-forced loss and, more importantly, generates every answer greedily and scores the parsed
title, category and price against the truth and against trivial baselines.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import lightning as L
import numpy as np
import torch

from phi3v.data.collate import model_inputs
from phi3v.data.prompts import PromptTemplate
from phi3v.modeling import Phi3VProcessor

from .answers import greedy_answers
from .lora import LoraSpec, apply_lora, trainable_parameter_names
from .metrics import ProductMetrics
from .model_spec import ModelSpec, load_base_model

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EvalSpec:
    """Evaluation by generation.

    Args:
        max_new_tokens: answer budget; the default answer is ~25 tokens with the Phi-3 tokenizer.
        table_samples: validation samples shown in the prediction table (fixed: the first ones).
        max_nonfinite_steps: consecutive non-finite losses tolerated (each step skipped) before stopping.
    """

    max_new_tokens: int = 48
    table_samples: int = 16
    max_nonfinite_steps: int = 5


class Phi3VLitModule(L.LightningModule):
    def __init__(
        self,
        spec: ModelSpec,
        lora: LoraSpec,
        optimizer: Callable[[Iterable[torch.nn.Parameter]], torch.optim.Optimizer],
        scheduler: Callable[[torch.optim.Optimizer, int], dict] | None,
        processor: Phi3VProcessor,
        template: PromptTemplate,
        evaluation: EvalSpec | None = None,
        baseline_scores: dict[str, dict[str, dict[str, float]]] | None = None,
    ):
        super().__init__()
        self.spec, self.lora = spec, lora
        self.optimizer_factory, self.scheduler_factory = optimizer, scheduler
        self.processor, self.template = processor, template
        self.evaluation = evaluation or EvalSpec()
        # {"val": {"train_mean": {metric: value}, ...}, "test": ...}: constant predictions on the
        # same split, computed once from the data (see phi3v.training.metrics.baseline_metrics).
        self.baseline_scores = baseline_scores or {}
        self.last_scores: dict[str, dict[str, float]] = {}
        self.loss_history: dict[str, list[float]] = {"val": [], "test": []}  # mean loss per evaluation
        self._loss_sums = {"val": [0.0, 0], "test": [0.0, 0]}
        self.model = None
        self.metrics = torch.nn.ModuleDict({"val": ProductMetrics(), "test": ProductMetrics()})
        self.eval_records: dict[str, list[dict]] = {"val": [], "test": []}
        self.nonfinite_in_a_row = 0
        self.nonfinite_total = 0
        self.strict_loading = False  # checkpoints hold only the trainable weights (checked on load)
        self._step_started = None

    # ---- model ---------------------------------------------------------------------------
    def configure_model(self) -> None:
        if self.model is not None:  # idempotent: Lightning may call it again (e.g. test after fit)
            return
        self.model = apply_lora(load_base_model(self.spec), self.lora)

    def trainable_names(self) -> list[str]:
        return trainable_parameter_names(self)

    def configure_optimizers(self):
        parameters = [p for p in self.parameters() if p.requires_grad]
        optimizer = self.optimizer_factory(parameters)
        if self.scheduler_factory is None:
            return optimizer
        total = int(self.trainer.estimated_stepping_batches)
        return {"optimizer": optimizer, "lr_scheduler": self.scheduler_factory(optimizer, total)}

    # ---- training ------------------------------------------------------------------------
    def training_step(self, batch, batch_idx: int):
        if batch is None:  # every image of this batch was unreadable (already logged)
            return None
        meta = batch["meta"]
        inputs = model_inputs(batch)
        loss = self.model(**inputs).loss
        if not self._finite_everywhere(loss):
            return None  # skip the optimizer step on every rank together
        tokens = int(inputs["attention_mask"].sum())
        samples = inputs["input_ids"].shape[0]
        self.log("train/loss", loss, prog_bar=True, batch_size=samples)
        self.log("train/skipped_images", float(meta["skipped_images"]), reduce_fx="sum", batch_size=samples)
        self._log_throughput(samples, tokens)
        return loss

    def _finite_everywhere(self, loss: torch.Tensor) -> bool:
        finite = torch.isfinite(loss.detach()).float()
        if self.trainer.world_size > 1 and torch.distributed.is_initialized():
            # every rank must skip together, or DDP's gradient all-reduce would wait forever
            torch.distributed.all_reduce(finite, op=torch.distributed.ReduceOp.MIN)
        if bool(finite > 0):
            self.nonfinite_in_a_row = 0
            return True
        self.nonfinite_in_a_row += 1
        self.nonfinite_total += 1
        self.log("train/nonfinite_steps", float(self.nonfinite_total))
        log.warning("non-finite loss at step %d: step skipped (%d in a row)", self.global_step, self.nonfinite_in_a_row)
        if self.nonfinite_in_a_row >= self.evaluation.max_nonfinite_steps:
            raise RuntimeError(
                f"{self.nonfinite_in_a_row} non-finite losses in a row at step {self.global_step}: training "
                "diverged. Lower optimizer.lr, use hardware.precision=bf16-mixed instead of 16-mixed, or set "
                "hardware.gradient_clip_val"
            )
        return False

    def _log_throughput(self, samples: int, tokens: int) -> None:
        now = time.perf_counter()
        if self._step_started is not None:
            seconds = max(now - self._step_started, 1e-9)
            self.log("train/samples_per_s", samples / seconds * self.trainer.world_size, batch_size=samples)
            self.log("train/tokens_per_s", tokens / seconds * self.trainer.world_size, batch_size=samples)
        self._step_started = now

    def on_before_optimizer_step(self, optimizer) -> None:
        grads = [p.grad.detach().float().norm() for p in self.parameters() if p.grad is not None]
        if grads:
            self.log("train/grad_norm", torch.stack(grads).norm())

    # ---- evaluation by generation ----------------------------------------------------------
    def validation_step(self, batch, batch_idx: int) -> None:
        self._evaluate(batch, "val")

    def test_step(self, batch, batch_idx: int) -> None:
        self._evaluate(batch, "test")

    def _evaluate(self, batch, split: str) -> None:
        if batch is None:
            return
        meta = batch["meta"]
        samples = len(meta["target"])
        loss = self.model(**model_inputs(batch["loss"])).loss
        self.log(f"{split}/loss", loss, sync_dist=True, batch_size=samples)
        self._loss_sums[split][0] += float(loss) * samples
        self._loss_sums[split][1] += samples
        answers = greedy_answers(self.model, self.processor, batch["generate"], self.evaluation.max_new_tokens)
        parsed = [self.template.parse(a) for a in answers]
        self.metrics[split].update(parsed, meta["price"], meta["category"], meta["title"])
        room = self.evaluation.table_samples - len(self.eval_records[split])
        for i in range(min(room, samples)):
            self.eval_records[split].append(
                {"image_path": meta["image_path"][i], "target": meta["target"][i], "prediction": answers[i],
                 "parsed": parsed[i], "price": float(meta["price"][i])}
            )

    def on_validation_epoch_start(self) -> None:
        self.eval_records["val"] = []

    def on_test_epoch_start(self) -> None:
        self.eval_records["test"] = []

    def on_validation_epoch_end(self) -> None:
        self._log_eval_metrics("val")

    def on_test_epoch_end(self) -> None:
        self._log_eval_metrics("test")

    def _log_eval_metrics(self, split: str) -> None:
        metric = self.metrics[split]
        values = metric.compute()
        for key, value in values.items():
            self.log(f"{split}/{key}", value.float(), sync_dist=False)
        for name, scores in self.baseline_scores.get(split, {}).items():
            for key, value in scores.items():
                self.log(f"{split}/{name}/{key}", float(value))
        self.last_scores[split] = {key: float(value) for key, value in values.items()}
        total, count = self._loss_sums[split]
        if count:
            self.loss_history[split].append(total / count)
        self._loss_sums[split] = [0.0, 0]
        metric.reset()

    # ---- checkpoints: trainable weights + RNG state -----------------------------------------
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        trainable = set(self.trainable_names())
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k in trainable}
        checkpoint["rng"] = capture_rng()
        checkpoint["nonfinite_total"] = self.nonfinite_total

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        missing = sorted(set(self.trainable_names()) - set(checkpoint["state_dict"]))
        if missing:
            raise RuntimeError(
                f"checkpoint lacks {len(missing)} trainable weights (e.g. {missing[:3]}): it was written by a run "
                "with a different model.lora / model.spec; resume with the same model settings"
            )
        if checkpoint.get("rng") is not None:
            restore_rng(checkpoint["rng"])
        self.nonfinite_total = checkpoint.get("nonfinite_total", 0)



def capture_rng() -> dict:
    """torch/numpy/python RNG states as tensors and plain values, loadable with `weights_only=True`
    (how Lightning reads checkpoints): LoRA dropout and data order continue exactly after a resume."""
    name, keys, position, has_gauss, gauss = np.random.get_state()
    version, state, gauss_next = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "numpy": [name, torch.from_numpy(keys.astype(np.int64)), int(position), int(has_gauss), float(gauss)],
        "python": [version, torch.tensor(state, dtype=torch.int64), gauss_next],
    }


def restore_rng(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    name, keys, position, has_gauss, gauss = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), position, has_gauss, gauss))
    version, python_state, gauss_next = state["python"]
    random.setstate((version, tuple(int(v) for v in python_state.tolist()), gauss_next))
