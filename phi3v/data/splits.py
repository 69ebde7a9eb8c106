"""Deterministic train/val/test splits grouped by product id (no product in two splits), and the record
of a run's splits (`splits.json` in the run dir: split -> sorted product ids, plus counts), the one
format predict and the demo read back through `read_splits` / `run_split_rows`."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from phi3v.files import atomic_write_text

SPLITS = ("train", "val", "test")
SPLITS_FILE = "splits.json"


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


def write_splits(run_dir: str | os.PathLike, product_ids: Sequence[str], splits: np.ndarray) -> Path:
    """Record which product went where in `run_dir`/splits.json (split -> sorted ids, plus counts),
    atomically; returns the file."""
    content = {name: sorted({pid for pid, s in zip(product_ids, splits) if s == name}) for name in SPLITS}
    content["counts"] = {name: len(content[name]) for name in SPLITS}
    path = Path(run_dir) / SPLITS_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(content, indent=1))
    return path


def has_splits(run_dir: str | os.PathLike) -> bool:
    """Whether `run_dir` records a run's splits (training writes splits.json there)."""
    return (Path(run_dir) / SPLITS_FILE).is_file()


def split_counts(run_dir: str | os.PathLike) -> dict[str, int]:
    """Products per split recorded in `run_dir` ({} when the run records no splits)."""
    if not has_splits(run_dir):
        return {}
    return json.loads((Path(run_dir) / SPLITS_FILE).read_text()).get("counts", {})


def read_splits(run_dir: str | os.PathLike) -> dict[str, frozenset[str]]:
    """The product ids of each split recorded in `run_dir` (ids as strings; a split absent: none)."""
    recorded = json.loads((Path(run_dir) / SPLITS_FILE).read_text())
    return {name: frozenset(str(pid) for pid in recorded.get(name, [])) for name in SPLITS}


def run_split_rows(
    product_ids: Sequence[str], run_dir: str | os.PathLike, split: str, catalogue: str
) -> tuple[np.ndarray, str]:
    """Rows of a catalogue (its product ids, in manifest order) in `split` of the run recorded in `run_dir`,
    and a sentence saying which: exactly the split's products the catalogue holds, or every row when the
    run never saw any of them (another catalogue; `catalogue` names it in the sentence)."""
    if split not in SPLITS:
        raise ValueError(f"split={split}: choose one of {', '.join(SPLITS)}")
    recorded = read_splits(run_dir)
    ids = [str(pid) for pid in product_ids]
    if frozenset().union(*recorded.values()).isdisjoint(ids):
        return np.arange(len(ids)), (f"the run {run_dir} never saw catalogue {catalogue}: predicting all {len(ids)} "
                                     f"products, split={split} does not apply")
    wanted = recorded[split]
    rows = np.flatnonzero([pid in wanted for pid in ids])
    description = f"predicting the {split} split of run {run_dir} (its {SPLITS_FILE}): {len(rows)} products"
    if len(rows) < len(wanted):
        description += f", {len(wanted) - len(rows)} of its {len(wanted)} are not in this catalogue"
    return rows, description
