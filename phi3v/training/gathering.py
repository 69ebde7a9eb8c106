"""Evaluation records of every rank, gathered once per evaluation and put in dataset order."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch.distributed as dist

if TYPE_CHECKING:
    from .evaluation import EvalRecord


def gather_records(records: list[EvalRecord], world_size: int) -> list[EvalRecord]:
    """All ranks' records, sorted by their dataset `index`, on every rank.

    The evaluation sampler hands padding repeats to some ranks but the module drops them before
    recording, so every sample must arrive exactly once: a duplicate means samples were counted
    twice (a sampler bug), and fails loudly rather than skewing the metrics."""
    if world_size > 1 and dist.is_available() and dist.is_initialized():
        parts: list[list[EvalRecord] | None] = [None] * world_size
        dist.all_gather_object(parts, records)
        records = [record for part in parts for record in part or []]
    records = sorted(records, key=lambda record: record.index)
    indices = [record.index for record in records]
    if len(set(indices)) != len(indices):
        repeated = sorted({i for i in indices if indices.count(i) > 1})
        raise RuntimeError(f"evaluation recorded samples {repeated[:10]} more than once across ranks")
    return records
