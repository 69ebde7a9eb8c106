"""Learning-rate schedules with linear warmup, stepped every optimizer step."""

from __future__ import annotations

import math

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR

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


def warmup_schedule(
    optimizer: Optimizer,
    total_steps: int,
    kind: str = "cosine",
    warmup_ratio: float = 0.05,
    min_lr_ratio: float = 0.1,
) -> dict:
    """A Lightning lr-scheduler config. `total_steps` comes from the trainer (estimated_stepping_batches).

    Args:
        kind: cosine | linear | constant (after the warmup).
        warmup_ratio: share of the steps spent warming up (5% is common for LoRA fine-tunes).
        min_lr_ratio: the lr decays to this share of the peak, not to zero.
    """
    if kind not in KINDS:
        raise ValueError(f"scheduler.kind must be one of {KINDS}, got {kind!r}")
    if not 0 <= warmup_ratio < 1:
        raise ValueError(f"scheduler.warmup_ratio must be in [0, 1), got {warmup_ratio}")
    warmup = max(1, round(warmup_ratio * total_steps)) if warmup_ratio > 0 else 0
    scheduler = LambdaLR(optimizer, lambda step: lr_factor(step, total_steps, warmup, kind, min_lr_ratio))
    return {"scheduler": scheduler, "interval": "step", "frequency": 1}
