"""Deterministic train/val/test splits grouped by product id (no product in two splits)."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from phi3v.files import atomic_write_text

SPLITS = ("train", "val", "test")


def check_fractions(val_fraction: float, test_fraction: float) -> None:
    problems = []
    for key, value in (("data.val_fraction", val_fraction), ("data.test_fraction", test_fraction)):
        if not 0 <= value < 1:
            problems.append(f"{key} must be in [0, 1), got {value}")
    if val_fraction + test_fraction >= 1:
        problems.append(f"data.val_fraction + data.test_fraction must be < 1, got {val_fraction + test_fraction}")
    if problems:
        raise ValueError("\n".join(problems))


def assign_splits(
    product_ids: Sequence[str], val_fraction: float, test_fraction: float, seed: int
) -> np.ndarray:
    """The split name of every row; all rows of one product id share it.

    Products (not rows) are shuffled with `seed` and cut: the first round(test_fraction * n) are
    test, the next round(val_fraction * n) val, the rest train.
    """
    check_fractions(val_fraction, test_fraction)
    unique, inverse = np.unique(np.asarray(product_ids, dtype=object).astype(str), return_inverse=True)
    order = np.random.default_rng(seed).permutation(len(unique))
    n_test = round(test_fraction * len(unique))
    n_val = round(val_fraction * len(unique))
    product_split = np.empty(len(unique), dtype=object)
    product_split[order[:n_test]] = "test"
    product_split[order[n_test : n_test + n_val]] = "val"
    product_split[order[n_test + n_val :]] = "train"
    return product_split[inverse]


def limited_rows(num_rows: int, limit: int | None, seed: int) -> np.ndarray:
    """Row indices to use: all, or `limit` of them chosen with `seed` (kept in table order)."""
    if limit is None or limit >= num_rows:
        return np.arange(num_rows)
    if limit < 1:
        raise ValueError(f"data.limit must be >= 1 or null, got {limit}")
    return np.sort(np.random.default_rng(seed).permutation(num_rows)[:limit])


def write_splits(path: str | os.PathLike, product_ids: Sequence[str], splits: np.ndarray) -> None:
    """Record which product went where (json: split -> sorted ids, plus counts), atomically."""
    content = {name: sorted({pid for pid, s in zip(product_ids, splits) if s == name}) for name in SPLITS}
    content["counts"] = {name: len(content[name]) for name in SPLITS}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(content, indent=1))
