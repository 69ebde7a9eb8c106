"""Length-grouped, DDP-aware, resumable batch sampler for variable-length Phi-3-V samples.

A product photo becomes 750-2,500 image tokens (aspect ratio x num_crops) plus ~40 text tokens, so random batches pad
~20% of every tensor. Sorting inside large random buckets keeps each step's samples similar in length while the order
of steps stays random.

Every rank builds the same plan from ``seed + epoch`` (no communication) and takes its own slice of each world batch
(one batch per rank; an optimizer step accumulates ``hardware.accumulate_grad_batches`` of them),
so all ranks yield the same number of full batches (an unequal count would hang DDP's all-reduce).

Lightning (2.6) integration:
- With a custom batch sampler, build the Trainer with ``use_distributed_sampler=False``: Lightning otherwise tries to
  re-create this class around a ``DistributedSampler`` (we raise a TypeError saying so).
- Lightning's epoch hook calls ``set_epoch`` on ``dataloader.sampler`` and ``dataloader.batch_sampler.sampler``, not
  on the batch sampler itself; ``sampler`` is therefore an alias of ``self`` so the hook reaches us. It is called once
  per epoch with the epoch number, also right after resuming (with the restored epoch), and *after* Lightning has
  called ``iter(dataloader)``. ``__iter__`` is a generator, so the plan is built at the first ``next()``, i.e. after
  ``set_epoch``, when ``num_workers=0``; workers pre-fetch indices at ``iter()`` time and then use the epoch already
  stored (correct after ``load_state_dict``, which stores the epoch, and from the second epoch on).
- ``batches_yielded`` counts batches handed to the DataLoader. With ``num_workers > 0`` the DataLoader pre-fetches up
  to ``num_workers * prefetch_factor`` batches, so the count runs ahead of training; for an exact resume, overwrite
  ``state["batches_yielded"]`` with the number of batches the module actually trained on in this epoch.
- The sampler is usually built in ``train_dataloader()``, which runs after checkpoint hooks: stash the state in
  ``on_load_checkpoint`` and call ``load_state_dict`` on the new sampler inside ``train_dataloader()``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Sequence

import numpy as np
import torch.distributed as dist
from torch.utils.data import Sampler

__all__ = [
    "LengthGroupedBatchSampler",
    "PaddingIndex",
    "int_at_least",
    "padding_share",
    "replicas_and_rank",
    "validated_lengths",
]


class PaddingIndex(int):
    """A dataset index repeated only to give every rank the same number of full batches.

    Equal to the plain index (the same sample is loaded), but the dataset marks such samples as padding and the
    collator gives them no labels and evaluation no records: under DDP every sample still counts exactly once per
    epoch. An int subclass, so it survives pickling to DataLoader workers unchanged."""

    __slots__ = ()

    def __repr__(self) -> str:
        return f"PaddingIndex({int(self)})"

# Keys that fix the epoch plan: a state saved under other values would skip the wrong batches.
_PLAN_KEYS = (
    "num_samples",
    "batch_size",
    "num_replicas",
    "shuffle",
    "group_by_length",
    "bucket_size_multiplier",
    "drop_last",
)


# ---- argument checks shared by the batch samplers (this one and eval_sampler.EvalBatchSampler) ----------------
def int_at_least(name: str, value: object, low: int = 1) -> int:
    """`value` as an int, after checking it is one (not a bool) and >= `low`; the error names `name`."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
    return int(value)


def validated_lengths(lengths: Sequence[int] | np.ndarray, sampler: str = "LengthGroupedBatchSampler") -> np.ndarray:
    """The token counts a batch sampler (named `sampler` in errors) orders by, as a 1-D int64 array of
    positive counts."""
    if isinstance(lengths, Sampler):
        raise TypeError(
            f"{sampler} got a Sampler as `lengths` (Lightning injecting a distributed "
            "sampler?): it shards by itself, build the Trainer with use_distributed_sampler=False"
        )
    arr = np.asarray(lengths)
    if arr.ndim != 1 or arr.size == 0:
        raise ValueError(f"lengths must be a non-empty 1-D sequence of token counts, got shape {arr.shape}")
    if arr.dtype == np.bool_ or not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"lengths must hold integer token counts, got dtype {arr.dtype}")
    if arr.min() < 1:
        raise ValueError(f"lengths must be positive, got {int(arr.min())} at index {int(arr.argmin())}")
    return arr.astype(np.int64)


def replicas_and_rank(num_replicas: int | None, rank: int | None) -> tuple[int, int]:
    """Like DistributedSampler: default to the initialised process group, else a single process."""
    initialised = dist.is_available() and dist.is_initialized()
    if num_replicas is None:
        num_replicas = dist.get_world_size() if initialised else 1
    if rank is None:
        rank = dist.get_rank() if initialised else 0
    num_replicas, rank = int_at_least("num_replicas", num_replicas), int_at_least("rank", rank, 0)
    if rank >= num_replicas:
        raise ValueError(f"rank={rank} must be < num_replicas={num_replicas}")
    return num_replicas, rank


class LengthGroupedBatchSampler(Sampler[list[int]]):
    """Yields this rank's batches of dataset indices; each step's samples have similar lengths on every rank.

    Per epoch: shuffle (seed + epoch); pad by wrapping around the permutation (``drop_last=False``, like
    DistributedSampler, but the repeats come as ``PaddingIndex`` so they can be left out of losses and metrics) or
    cut the tail (``drop_last=True``); sort mega-buckets of ``bucket_size_multiplier`` world batches by length
    (descending, stable); cut world batches of ``batch_size * num_replicas``; shuffle their order but put the one
    holding the longest sample first, so an out-of-memory batch fails at step 0 rather than hours
    in; rank r takes the contiguous slice ``[r * batch_size, (r + 1) * batch_size)`` of each sorted world batch.
    The slowest rank (the one with the longest sample) sets the step time either way, and contiguous slices give the
    other ranks less padding than strided ones would. Without ``group_by_length`` the shuffled (or, with
    ``shuffle=False``, sequential) order is cut the same way, with no sorting and no longest-first.
    """

    def __init__(
        self,
        lengths: Sequence[int] | np.ndarray,
        batch_size: int,
        *,
        shuffle: bool = True,
        group_by_length: bool = True,
        bucket_size_multiplier: int = 50,
        drop_last: bool = False,
        num_replicas: int | None = None,
        rank: int | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.lengths = validated_lengths(lengths)
        self.batch_size = int_at_least("batch_size", batch_size)
        # 50 world batches per bucket: big enough that sorted neighbours differ by a few tokens, small enough that a
        # bucket is still a random draw from the whole dataset (its lengths mix every aspect-ratio mode).
        self.bucket_size_multiplier = int_at_least("bucket_size_multiplier", bucket_size_multiplier)
        self.num_replicas, self.rank = replicas_and_rank(num_replicas, rank)
        self.seed = int_at_least("seed", seed, 0)
        self.shuffle, self.group_by_length, self.drop_last = shuffle, group_by_length, drop_last
        self.world_batch_size = self.batch_size * self.num_replicas
        n = len(self.lengths)
        self.num_batches = n // self.world_batch_size if drop_last else math.ceil(n / self.world_batch_size)
        if self.num_batches == 0:
            raise ValueError(
                f"drop_last=True with {n} lengths < batch_size * num_replicas = "
                f"{self.world_batch_size} leaves no batch; lower batch_size or set drop_last=False"
            )
        self.epoch = 0
        self._yielded = 0  # batches handed out in self.epoch (by the running or the last iterator)
        self._resume_from = 0  # batches the next iterator skips (set by load_state_dict, cleared by a new epoch)

    @property
    def sampler(self) -> LengthGroupedBatchSampler:
        """Alias of ``self``: Lightning calls ``set_epoch`` on ``dataloader.batch_sampler.sampler``."""
        return self

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch's plan. The same epoch again keeps a pending restore (Lightning re-announces it)."""
        epoch = int_at_least("epoch", epoch, 0)
        if epoch != self.epoch:
            self.epoch, self._yielded, self._resume_from = epoch, 0, 0

    def world_batches(self, epoch: int) -> np.ndarray:
        """The (num_batches, batch_size * num_replicas) plan of an epoch, identical on every rank."""
        return self._plan(epoch)[0]

    def _plan(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        """(plan, padding): the epoch's world batches and which of their slots repeat an earlier sample."""
        rng = np.random.default_rng(self.seed + epoch)
        n, total = len(self.lengths), self.num_batches * self.world_batch_size
        order = rng.permutation(n) if self.shuffle else np.arange(n)
        # np.resize repeats cyclically: wrap-around padding (even when the padding exceeds n) or the drop_last cut.
        order = np.resize(order, total)
        padding = np.arange(total) >= n  # the repeats; sorted along with their slots below
        if not self.group_by_length:
            shape = (self.num_batches, self.world_batch_size)
            return order.reshape(shape), padding.reshape(shape)
        bucket = self.world_batch_size * self.bucket_size_multiplier  # a multiple of the world batch: no straddling
        for start in range(0, total, bucket):
            chunk = slice(start, start + bucket)
            by_length = np.argsort(-self.lengths[order[chunk]], kind="stable")
            order[chunk], padding[chunk] = order[chunk][by_length], padding[chunk][by_length]
        batches = order.reshape(self.num_batches, self.world_batch_size)
        padding = padding.reshape(batches.shape)
        if self.shuffle:
            permutation = rng.permutation(self.num_batches)
            batches, padding = batches[permutation], padding[permutation]
        longest = int(np.argmax(self.lengths[batches[:, 0]]))  # rows are sorted: column 0 holds each row's maximum
        batches[[0, longest]] = batches[[longest, 0]]
        padding[[0, longest]] = padding[[longest, 0]]
        return batches, padding

    def __iter__(self) -> Iterator[list[int]]:
        # A generator: nothing below runs before the first next() (after Lightning's set_epoch when num_workers=0).
        start, self._resume_from = self._resume_from, 0
        self._yielded = start
        lo = self.rank * self.batch_size
        plan, padding = self._plan(self.epoch)
        mine = slice(lo, lo + self.batch_size)
        for batch, repeats in zip(plan[start:, mine], padding[start:, mine]):
            self._yielded += 1  # before the yield: a state saved while the consumer holds batch k says k
            yield [PaddingIndex(i) if repeat else i for i, repeat in zip(batch.tolist(), repeats.tolist())]

    def __len__(self) -> int:
        """Batches per rank in a full epoch (also after a restore: Lightning keeps counting from the restored step)."""
        return self.num_batches

    def state_dict(self) -> dict:
        """Rank-independent state (every rank is at the same step): saving rank 0's copy is enough.

        ``batches_yielded`` counts batches handed to the DataLoader, ahead of training when workers pre-fetch.
        """
        return {
            "epoch": self.epoch,
            "batches_yielded": self._yielded,
            "seed": self.seed,
            "num_samples": len(self.lengths),
            "batch_size": self.batch_size,
            "num_replicas": self.num_replicas,
            "shuffle": self.shuffle,
            "group_by_length": self.group_by_length,
            "bucket_size_multiplier": self.bucket_size_multiplier,
            "drop_last": self.drop_last,
        }

    def load_state_dict(self, state: dict) -> None:
        """Resume: the next ``__iter__`` skips the ``batches_yielded`` first batches of ``state["epoch"]``.

        A finished epoch loads as the start of the next one, so that an iterator built before ``set_epoch`` (workers
        pre-fetch at ``iter()``) does not come up empty; Lightning then calls ``set_epoch`` with that next epoch.
        """
        mine = self.state_dict()
        for key in _PLAN_KEYS:
            if key in state and state[key] != mine[key]:
                raise ValueError(f"state {key}={state[key]!r} differs from this sampler's {mine[key]!r}")
        done = int_at_least("batches_yielded", state["batches_yielded"], 0)
        if done > self.num_batches:
            raise ValueError(f"batches_yielded={done} exceeds the {self.num_batches} batches of an epoch")
        epoch = int_at_least("epoch", state["epoch"], 0)
        self.seed = int_at_least("seed", state.get("seed", self.seed), 0)
        self.epoch = epoch + (done == self.num_batches)
        self._yielded = self._resume_from = done % self.num_batches


def padding_share(lengths: Sequence[int] | np.ndarray, batches: Iterable[Sequence[int]]) -> float:
    """Padded tokens / all tokens (real + padding) when every batch pads to its longest sample."""
    lengths = np.asarray(lengths, dtype=np.int64)
    padded = real = 0
    for batch in batches:
        batch_lengths = lengths[np.asarray(batch, dtype=np.int64)]
        padded += int(batch_lengths.size * batch_lengths.max(initial=0))
        real += int(batch_lengths.sum())
    if padded == 0:
        raise ValueError("batches hold no tokens")
    return (padded - real) / padded
