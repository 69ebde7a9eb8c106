"""Phi3VLitModule: LoRA fine-tuning with evaluation by generation.

The model is built in `configure_model` (so sharded strategies never hold it whole on every rank);
only trainable parameters reach the optimizer and the checkpoints. Validation computes the
teacher-forced loss and, more importantly, generates every answer greedily and scores the task's parsed
fields by type against the truth and against trivial baselines. What evaluation leaves is
one typed result, `module.results` (phi3v.training.evaluation): the summary, callbacks and W&B read it.
"""

from __future__ import annotations

import logging
import random
import resource
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace

import lightning as L
import numpy as np
import torch

from phi3v.inference import answered, greedy_answers
from phi3v.modeling import Phi3VProcessor, training_attention_mask
from phi3v.modeling.batch import eval_inputs, model_inputs
from phi3v.modeling.model_spec import ModelSpec, load_base_model
from phi3v.task import TaskSpec

from .evaluation import EvalRecord, EvaluationResult
from .gathering import gather_records
from .lora import apply_lora, cast_lora_inputs, trainable_parameter_names
from .losses import logits_window, per_sample_loss, supervised_tokens
from .metrics import answer_metrics
from .quantized import check_quantized_run
from .sharding import full_tensor, shard_model
from .specs import EvalSpec, LoraSpec, ShardingSpec

log = logging.getLogger(__name__)


class Phi3VLitModule(L.LightningModule):
    def __init__(
        self,
        spec: ModelSpec,
        lora: LoraSpec,
        optimizer: Callable[[Iterable[torch.nn.Parameter]], torch.optim.Optimizer],
        scheduler: Callable[[torch.optim.Optimizer, int], dict] | None,
        processor: Phi3VProcessor,
        task: TaskSpec,
        evaluation: EvalSpec | None = None,
        baseline_scores: dict[str, dict[str, dict[str, float]]] | None = None,
        sharding: ShardingSpec | None = None,
    ):
        super().__init__()
        self.spec, self.lora = spec, lora
        self.optimizer_factory, self.scheduler_factory = optimizer, scheduler
        self.processor, self.task = processor, task
        self.evaluation = evaluation or EvalSpec()
        self.sharding = sharding or ShardingSpec()  # used when the strategy provides a device mesh (fsdp)
        # every evaluation's metrics and loss (the summary's learning curve), the latest records of each
        # split, and the baselines: {"val": {"train_mean": {metric: value}, ...}, "test": ...}, constant
        # predictions on the same split computed once from the data (phi3v.training.metrics.split_baselines)
        self.results = EvaluationResult(baselines=baseline_scores or {})
        self.model = None
        self._records: dict[str, list[EvalRecord]] = {"val": [], "test": []}  # this rank's, during an evaluation
        self.nonfinite_in_a_row = 0
        self.nonfinite_total = 0
        self.strict_loading = False  # checkpoints hold only the trainable weights (checked on load)
        self._unlogged = TrainingWindow()  # the training steps since the last logged one
        self._evaluation_started: dict[str, float] = {}

    # ---- model ---------------------------------------------------------------------------
    def configure_model(self) -> None:
        if self.model is not None:  # idempotent: Lightning may call it again (e.g. test after fit)
            return
        strategy = "fsdp" if self.device_mesh is not None else "auto"
        check_quantized_run(self.spec.quantization, strategy, self.lora.enabled)
        model = apply_lora(load_base_model(self.spec), self.lora)
        if self._trainer is not None and str(self._trainer.precision).endswith("-mixed"):  # under autocast
            cast_lora_inputs(model, False)  # PEFT's float32 copy of each adapted input would be cast back at once
        if self.device_mesh is not None:  # FullyShardedStrategy: shard over its data-parallel ranks
            shard_model(model, self.device_mesh["data_parallel"], self.sharding)
        self.model = model

    def trainable_names(self) -> list[str]:
        return trainable_parameter_names(self)

    def configure_optimizers(self):
        parameters = [p for p in self.parameters() if p.requires_grad]
        optimizer = self.optimizer_factory(parameters)
        if self.scheduler_factory is None:
            return optimizer
        total = int(self.trainer.estimated_stepping_batches)
        return {"optimizer": optimizer, "lr_scheduler": self.scheduler_factory(optimizer, total)}

    # ---- training ----------------------------------------------------------------------------
    def training_step(self, batch, batch_idx: int):
        meta = batch["meta"]
        inputs = model_inputs(batch)
        labels = inputs.pop("labels")
        window = logits_window(labels)
        # The model's loss over the answer window as a sum (transformers' convention: the sum divided by
        # num_items_in_batch), so ranks can be added up exactly (see losses.py); with fused kernels
        # (model.spec.kernels) it comes from the lm_head + cross-entropy kernel and no logits exist.
        output = self.model(**teacher_forced(inputs, labels), labels=labels, logits_to_keep=window,
                            num_items_in_batch=1, use_cache=False)  # no KV cache to fill for a loss
        token_loss_sum, tokens = output.loss, supervised_tokens(labels)
        # The loss of the whole global batch, mean over its supervised tokens: one all-reduce of
        # (sum, count) gives every rank the same value, so a non-finite loss is skipped everywhere
        # together (a rank skipping alone would leave the others waiting in the gradient all-reduce).
        samples = sum(meta["supervised"])
        totals = torch.stack([
            token_loss_sum.detach().float(), tokens.float(),
            torch.tensor(float(samples), device=tokens.device), inputs["attention_mask"].sum().float(),
        ])
        world = self._all_reduce_sum(totals)  # (loss sum, supervised tokens, samples, tokens) of all ranks
        global_tokens = float(totals[1])
        mean = totals[0] / totals[1].clamp(min=1)
        if global_tokens == 0 or not torch.isfinite(mean):
            return self._skip_nonfinite(global_tokens)
        self.nonfinite_in_a_row = 0
        # DDP and FSDP average gradients over ranks: scaling by world / global tokens makes the averaged
        # gradient that of the global token mean, exactly what one process with the whole batch computes.
        # A rank without supervised tokens (unreadable images, padding) has an empty sum that still hangs
        # off the logits: its backward gives every weight a zero gradient, so the all-reduce completes.
        loss = token_loss_sum * (world / global_tokens)
        self._unlogged.add(int(totals[2]), int(totals[3]), int(meta["skipped_images"]))
        if self._logs_this_step():
            self._log_training(mean, max(samples, 1))
        return loss

    def _logs_this_step(self) -> bool:
        """Whether the logger records this training step (every `trainer.log_every_n_steps`, and the last):
        the training metrics are computed and logged only then (each `self.log` costs Lightning ~0.3 ms
        and the gradient norm ~1 ms, ~2% of the tiny demo's step at 1 thread when done every step)."""
        connector = getattr(self.trainer, "_logger_connector", None)  # Lightning's, knows log_every_n_steps
        return connector is None or connector.should_update_logs

    def _log_training(self, mean: torch.Tensor, batch_size: int) -> None:
        """This step's loss, and over the steps since the previous logged one: samples and tokens per second
        (all ranks) and the samples skipped for an unreadable photo (none is lost between two logged steps)."""
        self.log("train/loss", mean, prog_bar=True, batch_size=batch_size)
        window, seconds = self._unlogged.take()
        self.log("train/skipped_images", float(window.skipped_images), batch_size=batch_size)
        if seconds is not None:
            self.log("train/samples_per_s", window.samples / seconds, batch_size=batch_size)
            self.log("train/tokens_per_s", window.tokens / seconds, batch_size=batch_size)
        self.log("train/peak_memory_gib", peak_memory_gib(self.device), batch_size=batch_size)

    def _all_reduce_sum(self, values: torch.Tensor) -> int:
        """Sum `values` in place over ranks; returns the world size."""
        if self.trainer.world_size > 1 and torch.distributed.is_initialized():
            torch.distributed.all_reduce(values, op=torch.distributed.ReduceOp.SUM)
            return self.trainer.world_size
        return 1

    def _skip_nonfinite(self, global_tokens: float):
        if global_tokens == 0:  # every sample of the global batch unreadable: nothing to learn from
            log.warning("step %d: no readable sample in the batch on any rank; step skipped", self.global_step)
            return None
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
        return None

    def on_before_optimizer_step(self, optimizer) -> None:
        if not self._logs_this_step():
            return
        # sharded gradients give partial norms; full_tensor() sums them over ranks (all ranks run this:
        # they log the same steps)
        grads = [full_tensor(p.grad.detach().float().norm()) for p in self.parameters() if p.grad is not None]
        if grads:
            self.log("train/grad_norm", torch.stack(grads).norm())

    # ---- evaluation by generation ----------------------------------------------------------------
    def validation_step(self, batch, batch_idx: int) -> None:
        self._evaluate(batch, "val")

    def test_step(self, batch, batch_idx: int) -> None:
        self._evaluate(batch, "test")

    def _evaluate(self, batch, split: str) -> None:
        """Per sample: teacher-forced loss (sum and token count) and the greedy answer, parsed. Kept as
        records of this rank; the epoch end gathers every rank's and scores them once.

        Runs under no_grad, never inference_mode, whatever the Trainer chose: Lightning picks
        inference_mode unless the process group is gloo, and FSDP2 must all-gather weights into
        ordinary tensors it can free and gather again (train.py also builds its Trainer with
        inference_mode=False, so even the batch holds ordinary tensors)."""
        with torch.inference_mode(False), torch.no_grad():
            self._evaluate_batch(batch, split)

    def _evaluate_batch(self, batch, split: str) -> None:
        meta = batch["meta"]
        inputs = eval_inputs(batch, "loss")
        labels = inputs.pop("labels")
        # No KV cache for the loss pass (generation builds its own), and its logits are freed before
        # generating: they would otherwise sit beside the generation's cache.
        window = logits_window(labels)
        output = self.model(**teacher_forced(inputs, labels), use_cache=False, logits_to_keep=window)
        loss_sums, tokens = per_sample_loss(output.logits, labels[:, -window:])
        del output
        predictions = greedy_answers(
            self.model, self.processor, eval_inputs(batch, "generate"), self.evaluation.max_new_tokens,
            synced=self._sharded,
        )
        for i, answer in answered(meta, predictions, self.task):  # unreadable images, padding repeats: none
            self._records[split].append(EvalRecord(meta["index"][i], answer, float(loss_sums[i]), int(tokens[i])))

    @property
    def _sharded(self) -> bool:
        """Parameters are sharded over ranks: every rank must run the same number of forward passes."""
        return self.device_mesh is not None

    def on_validation_epoch_start(self) -> None:
        self._records["val"] = []
        self._evaluation_started["val"] = time.perf_counter()

    def on_test_epoch_start(self) -> None:
        self._records["test"] = []
        self._evaluation_started["test"] = time.perf_counter()

    def on_validation_epoch_end(self) -> None:
        self._log_eval_metrics("val")

    def on_test_epoch_end(self) -> None:
        self._log_eval_metrics("test")

    def _log_eval_metrics(self, split: str) -> None:
        # wall time of the evaluation (loss + generation), the slowest rank's: what it adds to a run
        seconds = time.perf_counter() - self._evaluation_started.pop(split, time.perf_counter())
        self.log(f"{split}/seconds", seconds, sync_dist=True, reduce_fx="max")
        records = gather_records(self._records[split], self.trainer.world_size)
        self._records[split] = []
        if not records:
            self.results = self.results.unscored(split)
            return
        values = answer_metrics(self.task, records)
        # identical on every rank already; sync_dist only keeps Lightning's distributed checks satisfied
        for key, value in values.items():
            self.log(f"{split}/{key}", value, sync_dist=True)
        for name, scores in self.results.baselines.get(split, {}).items():
            for key, value in scores.items():
                self.log(f"{split}/{name}/{key}", float(value), sync_dist=True)
        self.results = self.results.added(split, records, values)

    # ---- checkpoints: trainable weights + RNG state -----------------------------------------
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        trainable = set(self.trainable_names())
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k in trainable}
        checkpoint["rng"] = capture_rng()
        checkpoint["nonfinite_total"] = self.nonfinite_total

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        # A sharded checkpoint's weights were already loaded (and checked) by FullyShardedStrategy.
        missing = sorted(set(self.trainable_names()) - set(checkpoint.get("state_dict", self.trainable_names())))
        if missing:
            raise RuntimeError(
                f"checkpoint lacks {len(missing)} trainable weights (e.g. {missing[:3]}): it was written by a run "
                "with a different model.lora / model.spec; resume with the same model settings"
            )
        if checkpoint.get("rng") is not None:
            restore_rng(checkpoint["rng"])
        self.nonfinite_total = checkpoint.get("nonfinite_total", 0)



def teacher_forced(inputs: dict, labels: torch.Tensor) -> dict:
    """Model inputs of a loss forward: without the padding mask when it changes no supervised logit
    (right padding, unlabelled pads; see phi3v.modeling.masking), so attention runs purely causal."""
    return {**inputs, "attention_mask": training_attention_mask(inputs.get("attention_mask"), labels)}


@dataclass
class TrainingWindow:
    """What the training steps since the last logged one did: samples, tokens and unreadable photos of
    the global batches, counted every step, read (and restarted) when a step is logged."""

    samples: int = 0
    tokens: int = 0
    skipped_images: int = 0
    started: float | None = None  # when the previous logged step ended; None before the first

    def add(self, samples: int, tokens: int, skipped_images: int) -> None:
        self.samples += samples
        self.tokens += tokens
        self.skipped_images += skipped_images

    def take(self) -> tuple[TrainingWindow, float | None]:
        """The window so far and its seconds (None for the first: no logged step ended before it); a new
        window starts now."""
        now = time.perf_counter()
        taken, seconds = replace(self), None if self.started is None else max(now - self.started, 1e-9)
        self.samples = self.tokens = self.skipped_images = 0
        self.started = now
        return taken, seconds


def peak_memory_gib(device: torch.device) -> float:
    """Peak memory of this process so far: allocated GPU memory on CUDA, resident set size on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux reports KiB


def capture_rng() -> dict:
    """torch/numpy/python RNG states as tensors and plain values, loadable with `weights_only=True`
    (how Lightning reads checkpoints): LoRA dropout and data order continue exactly after a resume.
    On a GPU run also the CUDA generator of this process's device (LoRA dropout draws there); only
    once CUDA is in use, so a CPU run on a GPU machine never initialises it."""
    name, keys, position, has_gauss, gauss = np.random.get_state()
    version, state, gauss_next = random.getstate()
    states = {
        "torch": torch.get_rng_state(),
        "numpy": [name, torch.from_numpy(keys.astype(np.int64)), int(position), int(has_gauss), float(gauss)],
        "python": [version, torch.tensor(state, dtype=torch.int64), gauss_next],
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state()  # (16,) uint8 on the CPU: seed + offset of the current device
    return states


def restore_rng(state: dict) -> None:
    """Inverse of `capture_rng`. A checkpoint moved between a GPU and a CPU machine still loads: the
    CUDA state is restored only where it was saved and CUDA is available."""
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])
    name, keys, position, has_gauss, gauss = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), position, has_gauss, gauss))
    version, python_state, gauss_next = state["python"]
    random.setstate((version, tuple(int(v) for v in python_state.tolist()), gauss_next))
