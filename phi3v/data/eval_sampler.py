"""Evaluation batches for one rank: every sample exactly once over all ranks, equal batch counts.

Collectives during evaluation (gathering records, FSDP's weight all-gathers in every generation
step) need every rank to run the same number of batches. The split is sorted by token count
(longest first: similar lengths share a batch, so generation pads little), padded with at most
`num_replicas - 1` flagged repeats to a multiple of the world size, and dealt out round-robin, so
each rank gets ceil(n / world) samples of similar lengths; only the last batch may be smaller.
`indices` restricts this to a subset of the split (e.g. a fixed sample per validation).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import numpy as np
from torch.utils.data import Sampler

from .sampler import PaddingIndex, int_at_least, replicas_and_rank, validated_lengths


class EvalBatchSampler(Sampler[list[int]]):
    def __init__(
        self,
        lengths: Sequence[int] | np.ndarray,
        batch_size: int,
        *,
        group_by_length: bool = True,
        num_replicas: int | None = None,
        rank: int | None = None,
        indices: Sequence[int] | np.ndarray | None = None,
    ) -> None:
        super().__init__()
        self.lengths = validated_lengths(lengths, "EvalBatchSampler")
        self.batch_size = int_at_least("batch_size", batch_size)
        self.group_by_length = group_by_length
        self.num_replicas, self.rank = replicas_and_rank(num_replicas, rank)
        self.indices = np.arange(len(self.lengths)) if indices is None else np.asarray(indices, dtype=np.int64)
        if len(self.indices) and not (0 <= self.indices.min() and self.indices.max() < len(self.lengths)):
            raise ValueError(
                f"indices must lie in [0, {len(self.lengths)}), got {self.indices.min()}..{self.indices.max()}"
            )
        self.per_rank = math.ceil(len(self.indices) / self.num_replicas)

    def __iter__(self) -> Iterator[list[int]]:
        n = len(self.indices)
        longest_first = np.argsort(-self.lengths[self.indices], kind="stable")
        order = self.indices[longest_first] if self.group_by_length else self.indices
        total = self.per_rank * self.num_replicas
        slots = np.resize(order, total)  # the tail repeats the first (longest) samples
        padding = np.arange(total) >= n
        mine, repeats = slots[self.rank :: self.num_replicas], padding[self.rank :: self.num_replicas]
        for start in range(0, self.per_rank, self.batch_size):
            chunk = slice(start, start + self.batch_size)
            yield [PaddingIndex(i) if r else i for i, r in zip(mine[chunk].tolist(), repeats[chunk].tolist())]

    def __len__(self) -> int:
        return math.ceil(self.per_rank / self.batch_size)
