"""Ranges and choices of the composed config, checked right after composition (before any import of
torch or a model): every problem at once, each naming the key's full name and what is allowed.

Types are the schemas' job (config_schema.py); the specs our parts take (model.spec, model.lora, data,
hardware.fsdp, scheduler) also check their own values when built. Lists of choices are imported from the
torch-free modules that use them (`KINDS` of the scheduler, `STRATEGIES`, `DTYPES`, `MODES`). Lightning's
lists are copied, since importing Lightning takes seconds: tests/test_config.py checks the copies against
Lightning.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from phi3v.modeling.model_spec import CHECKPOINTING, DTYPES, KERNELS
from phi3v.task import TaskSpec
from phi3v.task.scoring import lower_is_better, metric_keys
from phi3v.training.loggers import MODES
from phi3v.training.schedules import KINDS
from phi3v.training.specs import STRATEGIES
from phi3v.training.threads import AUTO

# lightning.fabric.connector's _PRECISION_INPUT_STR + _PRECISION_INPUT_STR_ALIAS, and the accelerators its
# Trainer accepts (the registered ones, and gpu and auto, which its accelerator connector resolves)
PRECISIONS = ("transformer-engine", "transformer-engine-float16", "16-true", "16-mixed", "bf16-true", "bf16-mixed",
              "32-true", "64-true", "64", "32", "16", "bf16")
ACCELERATORS = ("cpu", "gpu", "cuda", "mps", "tpu", "auto")


class ConfigError(ValueError):
    """Config values out of range: one line per key, each naming it and what is allowed."""


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _at_least(low: float) -> tuple[Callable[[Any], bool], str]:
    return (lambda v: _number(v) and v >= low), f">= {low}"


def _positive() -> tuple[Callable[[Any], bool], str]:
    return (lambda v: _number(v) and v > 0), "> 0"


def _fraction(closed: bool = False) -> tuple[Callable[[Any], bool], str]:
    if closed:
        return (lambda v: _number(v) and 0 <= v <= 1), "in [0, 1]"
    return (lambda v: _number(v) and 0 <= v < 1), "in [0, 1)"


def _one_of(choices) -> tuple[Callable[[Any], bool], str]:
    return (lambda v: v in choices), "one of " + ", ".join(str(c).lower() if isinstance(c, bool) else str(c)
                                                            for c in choices)


def _or_null(rule: tuple[Callable[[Any], bool], str]) -> tuple[Callable[[Any], bool], str]:
    check, allowed = rule
    return (lambda v: v is None or check(v)), f"{allowed}, or null"


def _steps_or_unlimited() -> tuple[Callable[[Any], bool], str]:
    return (lambda v: _number(v) and (v == -1 or v >= 1)), ">= 1, or -1 (no limit)"


def _share_or_count() -> tuple[Callable[[Any], bool], str]:
    """Lightning's convention: a float is a fraction of an epoch, an int a number of batches/steps."""
    def check(v: Any) -> bool:
        return (isinstance(v, float) and 0 < v <= 1) or (isinstance(v, int) and not isinstance(v, bool) and v >= 0)
    return check, "a fraction in (0.0, 1.0] or a whole number of batches >= 0"


def _devices() -> tuple[Callable[[Any], bool], str]:
    def check(v: Any) -> bool:
        if v == "auto" or (isinstance(v, int) and not isinstance(v, bool) and (v >= 1 or v == -1)):
            return True
        return isinstance(v, list) and all(isinstance(i, int) and i >= 0 for i in v)
    return check, "auto, a count >= 1 (-1 = all), or a list of device ids"


def _threads() -> tuple[Callable[[Any], bool], str]:
    auto = AUTO
    count, _ = _at_least(1)
    return (lambda v: v == auto or (isinstance(v, int) and count(v))), f"{auto} or a count >= 1"


def rules() -> dict[str, tuple[Callable[[Any], bool], str]]:
    """Full key -> (check, what is allowed). Keys absent from a config (e.g. optimizer.momentum with
    adamw) are skipped."""
    return {
        "seed": _at_least(0),
        "optimizer.lr": _positive(),
        "optimizer.weight_decay": _at_least(0),
        "optimizer.betas": ((lambda v: len(v) == 2 and all(_number(b) and 0 <= b < 1 for b in v)),
                            "two numbers in [0, 1)"),
        "optimizer.eps": _positive(),
        "optimizer.momentum": _at_least(0),
        "optimizer.dampening": _at_least(0),
        "scheduler.kind": _one_of(KINDS),
        "scheduler.warmup_ratio": _fraction(),
        "scheduler.min_lr_ratio": _fraction(closed=True),
        "trainer.max_epochs": _steps_or_unlimited(),
        "trainer.max_steps": _steps_or_unlimited(),
        "trainer.val_check_interval": _share_or_count(),
        "trainer.check_val_every_n_epoch": _or_null(_at_least(1)),
        "trainer.limit_train_batches": _share_or_count(),
        "trainer.limit_val_batches": _share_or_count(),
        "trainer.limit_test_batches": _share_or_count(),
        "trainer.num_sanity_val_steps": _at_least(-1),
        "trainer.log_every_n_steps": _at_least(1),
        "checkpoint.mode": _one_of(("min", "max")),
        "checkpoint.every_n_train_steps": _at_least(1),
        "evaluation.max_new_tokens": _at_least(1),
        "evaluation.table_samples": _at_least(0),
        "evaluation.max_nonfinite_steps": _at_least(1),
        "hardware.accelerator": _one_of(ACCELERATORS),
        "hardware.devices": _devices(),
        "hardware.num_nodes": _at_least(1),
        "hardware.strategy": _one_of(STRATEGIES),
        "hardware.precision": _one_of(PRECISIONS),
        "hardware.accumulate_grad_batches": _at_least(1),
        "hardware.gradient_clip_val": _or_null(_positive()),
        "hardware.timeout_minutes": _at_least(1),
        "hardware.threads": _threads(),
        "hardware.fsdp.param_dtype": _or_null(_one_of(DTYPES)),
        "hardware.fsdp.reduce_dtype": _one_of(DTYPES),
        "model.spec.dtype": _one_of(DTYPES),
        "model.spec.activation_checkpointing": _one_of(CHECKPOINTING),
        "model.spec.kernels": _or_null(_one_of(KERNELS)),
        "logger.mode": _one_of(MODES),
    }


def config_problems(cfg: DictConfig) -> list[str]:
    """One line per key out of range: `key=value: must be <allowed>`."""
    problems = []
    for key, (check, allowed) in rules().items():
        value = OmegaConf.select(cfg, key, default="<absent>")
        if value == "<absent>":
            continue
        plain = OmegaConf.to_container(value) if OmegaConf.is_config(value) else value
        if not check(plain):
            problems.append(f"{key}={plain}: must be {allowed}")
    kernels, accelerator = OmegaConf.select(cfg, "model.spec.kernels"), OmegaConf.select(cfg, "hardware.accelerator")
    if kernels in KERNELS and accelerator == "cpu":
        problems.append(f"model.spec.kernels={kernels}: its Triton kernels need a CUDA GPU, but "
                        "hardware.accelerator=cpu: set model.spec.kernels=null")
    precision = str(OmegaConf.select(cfg, "hardware.precision", default=""))
    if OmegaConf.select(cfg, "optimizer.fused") and precision.endswith("-mixed") \
            and OmegaConf.select(cfg, "hardware.gradient_clip_val"):
        # Lightning's mixed-precision plugin refuses to clip the gradients of an optimizer that unscales
        # them itself, which a fused AdamW/SGD does: the run would stop at its first step
        problems.append(f"optimizer.fused=true: Lightning cannot clip a fused optimizer's gradients under "
                        f"hardware.precision={precision}; set optimizer.fused=false or hardware.gradient_clip_val=null")
    resume = cfg.get("resume")
    if resume is not None and not Path(resume).exists():
        problems.append(f"resume={resume}: no such run dir or checkpoint")
    if OmegaConf.select(cfg, "data.task") is not None:
        try:
            task = OmegaConf.to_object(cfg.data.task)  # its own checks name data.task.* keys
        except ValueError as error:
            problems += str(error).splitlines()
        else:
            problems += monitor_problems(OmegaConf.select(cfg, "checkpoint.monitor"),
                                         OmegaConf.select(cfg, "checkpoint.mode"), task)
    return problems


def monitor_keys(task: TaskSpec) -> tuple[str, ...]:
    """What `checkpoint.monitor` (and a sweep's metric) may name: a validation metric of the task's fields
    (`val/<field>_<metric>`), the whole answer's `val/parse_rate`, or `val/loss`."""
    return (*(f"val/{key}" for key in metric_keys(task) if key != "count"), "val/loss")


def monitor_problems(monitor: str | None, mode: str | None, task: TaskSpec) -> list[str]:
    """`checkpoint.monitor` must be one of `monitor_keys(task)` (null: no best.ckpt), and `checkpoint.mode`
    must follow its direction (min for errors and the loss, max for the rest)."""
    if monitor is None:
        return []
    valid = monitor_keys(task)
    if monitor not in valid:
        return [f"checkpoint.monitor={monitor}: not a validation metric of data.task's fields; choose one of "
                f"{', '.join(valid)} (or null for no best.ckpt)"]
    wanted = "min" if lower_is_better(monitor.removeprefix("val/")) else "max"
    if mode in ("min", "max") and mode != wanted:
        better = "lower" if wanted == "min" else "higher"
        return [f"checkpoint.mode={mode}: {monitor} is better {better}, so best.ckpt would keep the worst weights; "
                f"set checkpoint.mode={wanted}"]
    return []


def check_config(cfg: DictConfig) -> None:
    """Raise ConfigError naming every key out of range (entry points call this first)."""
    problems = config_problems(cfg)
    if problems:
        raise ConfigError("config values out of range (set them on the command line, key=value):\n  "
                          + "\n  ".join(problems))
