"""Learning-rate schedules with linear warmup, stepped every optimizer step.

`WarmupSchedule` is at once the schedule and the schema of `scheduler` in conf/ (phi3v/config_schema.py
registers the class): torch is imported only when a schedule is built.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from torch.optim import Optimizer

KINDS = ("cosine", "linear", "constant")


def lr_factor(step: int, total_steps: int, warmup_steps: int, kind: str, min_lr_ratio: float) -> float:
    """Multiplier of the base lr at `step`: linear warmup from ~0, then cosine/linear decay to min_lr_ratio."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if kind == "constant":
        return 1.0
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    decay = 0.5 * (1 + math.cos(math.pi * progress)) if kind == "cosine" else 1 - progress
    return min_lr_ratio + (1 - min_lr_ratio) * decay


@dataclass(frozen=True)
class WarmupSchedule:
    """Linear warmup, then a decay; called with the optimizer and the run's number of optimizer steps
    (the trainer's estimated_stepping_batches), it gives Lightning's lr-scheduler config.

    Args:
        kind: cosine | linear | constant (after the warmup).
        warmup_ratio: share of the steps spent warming up (5% is common for LoRA fine-tunes).
        min_lr_ratio: the lr decays to this share of the peak, not to zero.
    """

    kind: str = "cosine"
    warmup_ratio: float = 0.05
    min_lr_ratio: float = 0.1

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"scheduler.kind must be one of {KINDS}, got {self.kind!r}")
        if not 0 <= self.warmup_ratio < 1:
            raise ValueError(f"scheduler.warmup_ratio must be in [0, 1), got {self.warmup_ratio}")

    def __call__(self, optimizer: Optimizer, total_steps: int) -> dict:
        from torch.optim.lr_scheduler import LambdaLR

        warmup = max(1, round(self.warmup_ratio * total_steps)) if self.warmup_ratio > 0 else 0
        scheduler = LambdaLR(
            optimizer, lambda step: lr_factor(step, total_steps, warmup, self.kind, self.min_lr_ratio)
        )
        return {"scheduler": scheduler, "interval": "step", "frequency": 1}
