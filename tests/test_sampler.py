"""LengthGroupedBatchSampler: DDP sharding, determinism, length grouping, mid-epoch resume, DataLoader use."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, Dataset, SequentialSampler

from phi3v.data.sampler import LengthGroupedBatchSampler, padding_share

pytestmark = pytest.mark.unit


def catalogue_lengths(n: int = 4000, seed: int = 0) -> np.ndarray:
    """Token counts like the product photos: three aspect-ratio modes of image tokens plus 40 +- 20 text tokens."""
    rng = np.random.default_rng(seed)
    mode = rng.choice(3, size=n, p=[0.60, 0.25, 0.15])
    image = rng.normal(np.array([1950, 2520, 800])[mode], np.array([30, 20, 40])[mode])
    return np.rint(image + 40 + rng.integers(-20, 21, size=n)).astype(np.int64)


def ranks(lengths, batch_size: int, replicas: int, **kwargs) -> list[LengthGroupedBatchSampler]:
    return [
        LengthGroupedBatchSampler(lengths, batch_size, num_replicas=replicas, rank=r, **kwargs) for r in range(replicas)
    ]


def epoch(samplers: list[LengthGroupedBatchSampler], number: int = 0) -> list[list[list[int]]]:
    for sampler in samplers:
        sampler.set_epoch(number)
    return [list(sampler) for sampler in samplers]


@pytest.mark.parametrize("replicas", [1, 2, 3])
@pytest.mark.parametrize("group", [True, False])
def test_every_index_once_per_epoch_when_divisible(replicas: int, group: bool):
    lengths = catalogue_lengths(4 * replicas * 30)
    per_rank = epoch(ranks(lengths, 4, replicas, group_by_length=group, bucket_size_multiplier=7), 3)
    assert [len(batches) for batches in per_rank] == [30] * replicas
    assert all(len(s) == 30 for s in ranks(lengths, 4, replicas))
    assert all(len(batch) == 4 for batches in per_rank for batch in batches)
    shards = [{i for batch in batches for i in batch} for batches in per_rank]
    assert sum(len(shard) for shard in shards) == len(lengths)  # disjoint across ranks ...
    assert set().union(*shards) == set(range(len(lengths)))  # ... and complete


@pytest.mark.parametrize("group", [True, False])
def test_padding_repeats_the_start_of_the_permutation(group: bool):
    # 50 samples, 3 ranks x 4: ceil(50 / 12) = 5 batches per rank, 60 slots, 10 indices used twice.
    per_rank = epoch(ranks(np.arange(1, 51), 4, 3, group_by_length=group))
    assert [len(batches) for batches in per_rank] == [5, 5, 5]
    assert all(len(batch) == 4 for batches in per_rank for batch in batches)
    counts = Counter(i for batches in per_rank for batch in batches for i in batch)
    assert set(counts) == set(range(50))
    assert sorted(counts.values()) == [1] * 40 + [2] * 10


def test_padding_without_shuffle_is_exact():
    per_rank = epoch(ranks(np.ones(50, dtype=int), 4, 3, shuffle=False, group_by_length=False))
    assert [batches[-1] for batches in per_rank] == [[48, 49, 0, 1], [2, 3, 4, 5], [6, 7, 8, 9]]
    assert per_rank[1][0] == [4, 5, 6, 7]  # contiguous slices of each global batch of 12


@pytest.mark.parametrize("group", [True, False])
def test_drop_last_drops_the_tail(group: bool):
    per_rank = epoch(ranks(np.arange(1, 51), 4, 3, drop_last=True, group_by_length=group))
    assert [len(batches) for batches in per_rank] == [4, 4, 4]
    used = [i for batches in per_rank for batch in batches for i in batch]
    assert len(used) == len(set(used)) == 48


def test_sequential_without_shuffle_and_grouping():
    sampler = LengthGroupedBatchSampler([5] * 7, 3, shuffle=False, group_by_length=False)
    assert list(sampler) == [[0, 1, 2], [3, 4, 5], [6, 0, 1]]
    sampler = LengthGroupedBatchSampler([5] * 7, 3, shuffle=False, group_by_length=False, drop_last=True)
    assert list(sampler) == [[0, 1, 2], [3, 4, 5]]
    assert (sampler.num_replicas, sampler.rank) == (1, 0)  # defaults without torch.distributed


@pytest.mark.parametrize("replicas", [1, 2])
def test_same_seed_and_epoch_give_the_same_batches(replicas: int):
    lengths = catalogue_lengths(500)
    first = epoch(ranks(lengths, 8, replicas, seed=11, bucket_size_multiplier=4), 2)
    assert epoch(ranks(lengths, 8, replicas, seed=11, bucket_size_multiplier=4), 2) == first
    assert epoch(ranks(lengths, 8, replicas, seed=11, bucket_size_multiplier=4), 3) != first
    assert epoch(ranks(lengths, 8, replicas, seed=12, bucket_size_multiplier=4), 2) != first
    again = ranks(lengths, 8, replicas, seed=11, bucket_size_multiplier=4)
    assert epoch(again, 2) == epoch(again, 2) == first  # re-iterating an epoch repeats it


def test_grouping_cuts_padding_on_catalogue_like_lengths():
    lengths = catalogue_lengths()
    grouped = [b for bs in epoch(ranks(lengths, 8, 2)) for b in bs]
    plain = [b for bs in epoch(ranks(lengths, 8, 2, group_by_length=False)) for b in bs]
    grouped_share, plain_share = padding_share(lengths, grouped), padding_share(lengths, plain)
    print(f"padding share: grouped {grouped_share:.4f}, plain {plain_share:.4f}")
    assert grouped_share <= 0.05
    assert plain_share >= 0.15
    assert grouped_share * 10 < plain_share


def test_grouped_batches_are_sorted_across_ranks_longest_first_and_order_shuffled():
    lengths = catalogue_lengths(2000, seed=3)
    per_rank = epoch(ranks(lengths, 4, 3, bucket_size_multiplier=10), 1)
    for step in zip(*per_rank):  # one training step: a global batch, dealt contiguously
        merged = [int(lengths[i]) for batch in step for i in batch]
        assert merged == sorted(merged, reverse=True)
    assert int(lengths[per_rank[0][0]].max()) == int(lengths.max())  # the OOM-prone batch comes first
    maxima = [int(lengths[batch].max()) for batch in per_rank[0]]
    rises = sum(later > earlier for earlier, later in zip(maxima, maxima[1:]))
    # Shuffled steps rise about half the time; unshuffled ones only where a 10-step bucket starts.
    assert rises >= len(maxima) // 3


def test_padding_share_exact():
    assert padding_share([1, 2, 3, 4], [[0, 1], [2, 3]]) == pytest.approx(2 / 12)
    assert padding_share([7, 7, 7], [[0, 1, 2]]) == 0.0


@pytest.mark.parametrize("replicas", [1, 2])
@pytest.mark.parametrize("done", [0, 1, 5, -1])
@pytest.mark.parametrize("pattern", ["plain", "set_epoch_then_iter", "iter_then_set_epoch"])
def test_resume_mid_epoch(replicas: int, done: int, pattern: str):
    lengths, kwargs = catalogue_lengths(77), dict(bucket_size_multiplier=3, seed=7)
    full = epoch(ranks(lengths, 4, replicas, **kwargs), 2)
    done %= len(full[0])  # -1: the last batch is still to come
    interrupted = ranks(lengths, 4, replicas, **kwargs)
    for sampler in interrupted:
        sampler.set_epoch(2)
    iterators = [iter(sampler) for sampler in interrupted]
    first = [[next(it) for _ in range(done)] for it in iterators]
    state = interrupted[0].state_dict()  # rank-independent: rank 0's copy restores every rank
    assert (state["epoch"], state["batches_yielded"], state["seed"]) == (2, done, 7)
    restored = ranks(lengths, 4, replicas, bucket_size_multiplier=3)  # default seed: taken from the state
    for r, sampler in enumerate(restored):
        sampler.load_state_dict(state)
        assert sampler.state_dict()["batches_yielded"] == done
        if pattern == "set_epoch_then_iter":
            sampler.set_epoch(2)
            rest = list(sampler)
        elif pattern == "iter_then_set_epoch":  # Lightning: iter(dataloader) in setup_data, then set_epoch
            it = iter(sampler)
            sampler.set_epoch(2)
            rest = list(it)
        else:
            rest = list(sampler)
        assert first[r] + rest == full[r]
        assert sampler.state_dict()["batches_yielded"] == len(full[r])
        assert list(sampler) == full[r]  # the restore applies to one iterator only
    assert epoch(restored, 3) == epoch(ranks(lengths, 4, replicas, **kwargs), 3)  # next epoch proceeds normally


def test_new_epoch_discards_a_pending_restore():
    lengths = catalogue_lengths(64)
    sampler = LengthGroupedBatchSampler(lengths, 4)
    sampler.load_state_dict({"epoch": 2, "batches_yielded": 3, "seed": 0})
    sampler.set_epoch(5)
    assert list(sampler) == epoch([LengthGroupedBatchSampler(lengths, 4)], 5)[0]


def test_finished_epoch_restores_as_the_next_epoch():
    lengths = catalogue_lengths(64)
    sampler = LengthGroupedBatchSampler(lengths, 4)
    sampler.set_epoch(4)
    assert len(list(sampler)) == 16
    restored = LengthGroupedBatchSampler(lengths, 4)
    restored.load_state_dict(sampler.state_dict())
    assert (restored.epoch, restored.state_dict()["batches_yielded"]) == (5, 0)
    it = iter(restored)  # an iterator made before Lightning's set_epoch(5) still yields epoch 5
    restored.set_epoch(5)
    assert list(it) == epoch([LengthGroupedBatchSampler(lengths, 4)], 5)[0]


@pytest.mark.parametrize(
    ("key", "value"), [("num_replicas", 2), ("batch_size", 8), ("num_samples", 65), ("group_by_length", False)]
)
def test_restore_rejects_a_state_from_another_plan(key: str, value: object):
    state = LengthGroupedBatchSampler(catalogue_lengths(64), 4).state_dict() | {key: value, "batches_yielded": 2}
    with pytest.raises(ValueError, match=key):
        LengthGroupedBatchSampler(catalogue_lengths(64), 4).load_state_dict(state)


@pytest.mark.parametrize(
    ("lengths", "kwargs", "name"),
    [
        ([], {}, "lengths"),
        ([[1, 2]], {}, "lengths"),
        ([3, 0], {}, "lengths"),
        ([1.5, 2.0], {}, "lengths"),
        ([3] * 8, {"batch_size": 0}, "batch_size"),
        ([3] * 8, {"num_replicas": 0}, "num_replicas"),
        ([3] * 8, {"num_replicas": 2, "rank": 2}, "rank"),
        ([3] * 8, {"bucket_size_multiplier": 0}, "bucket_size"),
        ([3] * 8, {"seed": -1}, "seed"),
        ([3] * 8, {"batch_size": 5, "num_replicas": 2, "drop_last": True}, "drop_last"),
    ],
)
def test_invalid_arguments_name_the_argument(lengths, kwargs: dict, name: str):
    kwargs = {"batch_size": 2} | kwargs
    with pytest.raises(ValueError, match=name):
        LengthGroupedBatchSampler(lengths, **kwargs)


def test_a_sampler_as_lengths_points_to_use_distributed_sampler_false():
    with pytest.raises(TypeError, match="use_distributed_sampler=False"):
        LengthGroupedBatchSampler(SequentialSampler(range(8)), 2)


class Indices(Dataset):
    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int) -> torch.Tensor:
        return torch.tensor(index)


@pytest.mark.parametrize("workers", [0, 2])
def test_dataloader_yields_the_sampler_batches(workers: int):
    lengths = catalogue_lengths(90)
    sampler = LengthGroupedBatchSampler(lengths, 4, num_replicas=2, rank=1)
    loader = DataLoader(Indices(90), batch_sampler=sampler, num_workers=workers)
    sampler.set_epoch(1)
    assert len(loader) == len(sampler) == 12
    assert [batch.tolist() for batch in loader] == epoch(
        [LengthGroupedBatchSampler(lengths, 4, num_replicas=2, rank=1)], 1
    )[0]


def test_lightning_epoch_hook_reaches_the_batch_sampler():
    # Lightning's fit loop calls set_epoch on dataloader.sampler and dataloader.batch_sampler.sampler (not on the
    # batch sampler itself); checked structurally because importing lightning costs ~7 s here.
    sampler = LengthGroupedBatchSampler(catalogue_lengths(16), 4)
    loader = DataLoader(Indices(16), batch_sampler=sampler)
    loader.batch_sampler.sampler.set_epoch(6)
    assert sampler.epoch == 6


# ---- padding repeats are flagged; evaluation shards ------------------------------------------------
@pytest.mark.parametrize("n,batch_size,world,group", [(10, 4, 2, True), (37, 3, 4, True), (5, 4, 3, False)])
def test_every_sample_counts_exactly_once_per_epoch_across_ranks(n, batch_size, world, group):
    from phi3v.data.sampler import PaddingIndex

    lengths = np.random.default_rng(n).integers(50, 500, n)
    real, counts = [], set()
    for rank in range(world):
        sampler = LengthGroupedBatchSampler(lengths, batch_size, group_by_length=group, num_replicas=world, rank=rank)
        batches = list(sampler)
        counts.add(len(batches))
        assert all(len(b) == batch_size for b in batches)
        real += [int(i) for b in batches for i in b if not isinstance(i, PaddingIndex)]
    assert len(counts) == 1  # equal batch counts on every rank
    assert sorted(real) == list(range(n))  # the repeats are all flagged: each sample once


@pytest.mark.parametrize("n,batch_size,world", [(6, 8, 1), (6, 8, 2), (23, 4, 3), (2, 4, 3)])
def test_eval_batches_cover_the_split_once_with_equal_counts_per_rank(n, batch_size, world):
    import pickle

    from phi3v.data.eval_sampler import EvalBatchSampler
    from phi3v.data.sampler import PaddingIndex

    lengths = np.random.default_rng(n).integers(50, 500, n)
    real, padding, counts = [], 0, set()
    for rank in range(world):
        batches = list(EvalBatchSampler(lengths, batch_size, num_replicas=world, rank=rank))
        counts.add(len(batches))
        flat = [i for b in batches for i in b]
        padding += sum(isinstance(i, PaddingIndex) for i in flat)
        real += [int(i) for i in flat if not isinstance(i, PaddingIndex)]
        first = pickle.loads(pickle.dumps(flat))  # DataLoader workers receive the indices pickled
        assert [type(i) for i in first] == [type(i) for i in flat]
    assert len(counts) == 1
    assert sorted(real) == list(range(n))
    assert padding == -n % world  # fewer repeats than ranks


@pytest.mark.parametrize("world", [1, 3])
def test_eval_sampler_restricted_to_indices_covers_exactly_those(world):
    from phi3v.data.eval_sampler import EvalBatchSampler
    from phi3v.data.sampler import PaddingIndex

    lengths = np.random.default_rng(5).integers(50, 500, 20)
    subset = [17, 3, 8, 11]
    ranks = [list(EvalBatchSampler(lengths, 2, num_replicas=world, rank=r, indices=subset)) for r in range(world)]
    flat = [i for batches in ranks for b in batches for i in b]
    assert sorted(int(i) for i in flat if not isinstance(i, PaddingIndex)) == sorted(subset)
    assert len({len(batches) for batches in ranks}) == 1
    assert sum(isinstance(i, PaddingIndex) for i in flat) == -len(subset) % world
    if world == 1:  # longest first, as for the whole split
        assert flat == sorted(subset, key=lambda i: -lengths[i])
    with pytest.raises(ValueError, match="indices must lie in"):
        EvalBatchSampler(lengths, 2, num_replicas=1, rank=0, indices=[20])
