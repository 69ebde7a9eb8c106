"""ProductDataModule: a prepared catalogue as train/val/test loaders for Phi-3-V.

The data config never knows the model: `connect(processor)` injects what batching needs (the
tokenizer, num_crops) after both are built.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from pathlib import Path

import lightning as L
import numpy as np
import torch
from lightning.pytorch.trainer.states import TrainerFn
from torch.utils.data import DataLoader

from phi3v.modeling import Phi3VProcessor
from phi3v.task import PromptTemplate

from .catalogue import ColumnMap
from .collate import Phi3VCollator
from .dataset import ProductDataset, read_manifest
from .download import DownloadSettings
from .eval_sampler import EvalBatchSampler
from .manifest import (
    MANIFEST,
    REPORT,
    SYNTHETIC,
    PrepareReport,
    catalogue_signature,
    default_data_dir,
    prepare_catalogue,
)
from .sampler import LengthGroupedBatchSampler
from .splits import SPLITS, assign_splits, check_fractions, limited_rows, run_split_rows, write_splits
from .synthetic import SyntheticSpec

log = logging.getLogger(__name__)
LENGTH_CHUNK = 4096  # rows counted per processor call: bounded memory for 100k-row catalogues


class ProductDataModule(L.LightningDataModule):
    """Image + title + category + price catalogues (Burberry, other DBQ brands, your own table).

    Args:
        source: "synthetic", a hub id, or a local table / saved dataset / image folder.
        data_dir: where images and the manifest go; default `data/<name derived from source>`.
        columns: which table columns hold image, title, category, price and id.
        split: the table split to read from a hub or saved dataset.
        val_fraction, test_fraction, split_seed: product-grouped split of the kept rows.
        limit: use at most this many rows (chosen with split_seed) for quick runs.
        prompt: question, answer template and price format.
        batch_size, eval_batch_size: per-device batch sizes (train / val and test).
        global_batch_size: samples per optimizer step over all devices; train.py derives
            hardware.accumulate_grad_batches from it (None: accumulation as set there).
        val_limit: products scored at each validation during training, the same ones every time (the
            first of an order seeded by split_seed); None = the whole split. Validation outside
            training (train.py runs one after fit when this is set) scores the whole split.
        num_workers, pin_memory, persistent_workers: DataLoader settings (persistent workers survive
            between epochs and evaluations; they are off without workers).
        group_by_length: batch samples of similar token count (much less padding).
        strict_images: an unreadable image fails the run (naming it) instead of being skipped.
        max_pixels: decompression-bomb guard.
        download, synthetic: settings of the downloader and of the synthetic catalogue.
        output_dir: where the chosen splits are recorded (the run dir); None to skip.
    """

    def __init__(
        self,
        source: str = SYNTHETIC,
        data_dir: str | None = None,
        columns: ColumnMap | None = None,
        split: str = "train",
        val_fraction: float = 0.1,
        test_fraction: float = 0.1,
        split_seed: int = 0,
        limit: int | None = None,
        prompt: PromptTemplate | None = None,
        batch_size: int = 4,
        eval_batch_size: int = 8,
        global_batch_size: int | None = None,
        val_limit: int | None = None,
        num_workers: int = 0,
        pin_memory: bool = False,
        persistent_workers: bool = True,
        group_by_length: bool = True,
        strict_images: bool = False,
        max_pixels: int = 64_000_000,
        download: DownloadSettings | None = None,
        synthetic: SyntheticSpec | None = None,
        output_dir: str | None = None,
    ):
        super().__init__()
        check_fractions(val_fraction, test_fraction)
        if batch_size < 1 or eval_batch_size < 1:
            raise ValueError(
                f"data.batch_size and data.eval_batch_size must be >= 1, got {batch_size}, {eval_batch_size}"
            )
        for key, value in (("global_batch_size", global_batch_size), ("val_limit", val_limit)):
            if value is not None and value < 1:
                raise ValueError(f"data.{key} must be >= 1 or null, got {value}")
        self.source = source
        self.data_dir = Path(data_dir) if data_dir else default_data_dir(source)
        self.columns = columns or ColumnMap()
        self.split, self.limit = split, limit
        self.val_fraction, self.test_fraction, self.split_seed = val_fraction, test_fraction, split_seed
        self.template = prompt or PromptTemplate()
        self.batch_size, self.eval_batch_size = batch_size, eval_batch_size
        self.global_batch_size, self.val_limit = global_batch_size, val_limit
        self.loader_options = dict(
            num_workers=num_workers, pin_memory=pin_memory, persistent_workers=persistent_workers and num_workers > 0,
            # Each iterator over a loader draws its workers' base seed from this generator instead of torch's
            # global RNG, which a resumed run restores for LoRA dropout: creating the loaders then leaves the
            # restored state where the interrupted run had it, and dropout continues exactly.
            generator=torch.Generator().manual_seed(split_seed),
        )
        self.group_by_length, self.strict_images, self.max_pixels = group_by_length, strict_images, max_pixels
        self.download = download or DownloadSettings()
        self.synthetic = synthetic or SyntheticSpec()
        self.output_dir = Path(output_dir) if output_dir else None
        self.processor: Phi3VProcessor | None = None
        self.datasets: dict[str, ProductDataset] = {}
        self.lengths: dict[str, np.ndarray] = {}
        self.train_sampler: LengthGroupedBatchSampler | None = None
        self._restored_sampler: dict | None = None
        self._trained_in_epoch: int | None = None  # see record_trained

    def connect(self, processor: Phi3VProcessor) -> None:
        """Inject the processor (tokenizer + num_crops) once the model side is built."""
        self.processor = processor

    # ---- preparing -----------------------------------------------------------------------
    def prepare_data(self) -> PrepareReport | None:
        """Build the manifest unless an up-to-date one exists (Lightning calls this on one process)."""
        if self._manifest_is_current():
            return None
        report = prepare_catalogue(
            self.source, self.data_dir, self.columns, self.download, self.synthetic, self.split
        )
        log.info(report.summary())
        return report

    def _manifest_is_current(self) -> bool:
        report = self.data_dir / REPORT
        if not (self.data_dir / MANIFEST).is_file() or not report.is_file():
            return False
        signature = catalogue_signature(self.source, self.columns, self.synthetic, self.split)
        return json.loads(report.read_text()).get("signature") == signature

    # ---- setting up ----------------------------------------------------------------------
    def setup(self, stage: str | None = None) -> None:
        if self.processor is None:
            raise RuntimeError("call datamodule.connect(processor) before setup()")
        if self.datasets:
            return
        manifest = read_manifest(self.data_dir / MANIFEST)
        manifest = manifest.take(limited_rows(manifest.num_rows, self.limit, self.split_seed))
        ids = manifest.column("product_id").to_pylist()
        splits = assign_splits(ids, self.val_fraction, self.test_fraction, self.split_seed)
        if self.output_dir is not None:
            write_splits(self.output_dir, ids, splits)
        for name in SPLITS:
            rows = np.flatnonzero(splits == name)
            table = manifest.take(rows)
            self.datasets[name] = ProductDataset(table, self.data_dir, self.strict_images, self.max_pixels)
            self.lengths[name] = self.token_lengths(self.datasets[name])
        counts = {name: len(d) for name, d in self.datasets.items()}
        log.info("data %s: %s", self.source, counts)

    # ---- the products of a split ---------------------------------------------------------------
    def split_products(self, split: str) -> ProductDataset:
        """The products of `split` as this datamodule assigns them (data.val_fraction, test_fraction,
        split_seed), in manifest order."""
        self.setup()
        return self.datasets[split]

    def truth(self, split: str) -> dict[str, list]:
        """The answer's fields of every product of `split`, as columns keyed by name (baselines)."""
        return self.split_products(split).truth()

    def run_products(self, split: str, run_dir: str | os.PathLike) -> tuple[ProductDataset, str]:
        """This catalogue's products in `split` of the run recorded in `run_dir` (its splits.json), in
        manifest order, or all of them when the run never saw any of its products; and a sentence
        saying which. Needs the manifest (`prepare_data`), not `setup`."""
        manifest = read_manifest(self.data_dir / MANIFEST)
        rows, description = run_split_rows(manifest.column("product_id").to_pylist(), run_dir, split,
                                           f"{self.source} ({self.data_dir})")
        return ProductDataset(manifest.take(rows), self.data_dir, self.strict_images, self.max_pixels), description

    def token_lengths(self, dataset: ProductDataset) -> np.ndarray:
        """Exact token count of every sample (prompt + image + answer + <|end|>), as the collator
        builds it (the processor counts), from the manifest's image sizes without opening images."""
        lengths = np.zeros(len(dataset), dtype=np.int64)
        prompt, table = self.template.prompt(), dataset.table
        for start in range(0, len(dataset), LENGTH_CHUNK):
            rows = table.slice(start, LENGTH_CHUNK)
            sizes = zip(rows.column("image_width").to_pylist(), rows.column("image_height").to_pylist())
            answers = [
                self.template.target(t, c, p)
                for t, c, p in zip(rows.column("title").to_pylist(), rows.column("category").to_pylist(),
                                   rows.column("price").to_pylist())
            ]
            lengths[start : start + rows.num_rows] = self.processor.sequence_lengths(prompt, list(sizes), answers)
        return lengths

    # ---- loaders -------------------------------------------------------------------------
    def train_dataloader(self) -> DataLoader:
        self.train_sampler = LengthGroupedBatchSampler(
            self.lengths["train"], self.batch_size, shuffle=True, group_by_length=self.group_by_length,
            seed=self.split_seed,
        )
        if self._restored_sampler is not None:  # resuming mid-epoch: skip the batches already trained
            self.train_sampler.load_state_dict(self._restored_sampler)
            self._restored_sampler = None
        return ResumableLoader(
            self.datasets["train"], batch_sampler=self.train_sampler,
            collate_fn=Phi3VCollator(self.processor, self.template, "train"), **self.loader_options,
            state=self.state_dict,
        )

    def _eval_loader(self, split: str, mode: str, indices: np.ndarray | None = None) -> DataLoader:
        """Each rank gets its share of the split, or of its `indices` (see EvalBatchSampler): equal batch
        counts on all ranks."""
        if len(self.datasets[split]) == 0:  # e.g. data.val_fraction=0: no batches
            return DataLoader(self.datasets[split], batch_size=self.eval_batch_size)
        sampler = EvalBatchSampler(
            self.lengths[split], self.eval_batch_size, group_by_length=self.group_by_length, indices=indices
        )
        return DataLoader(
            self.datasets[split], batch_sampler=sampler,
            collate_fn=Phi3VCollator(self.processor, self.template, mode), **self.loader_options,
        )

    def val_dataloader(self) -> DataLoader:
        """During training the `val_limit` subset (see val_subset); otherwise the whole split."""
        fitting = self.trainer is not None and self.trainer.state.fn == TrainerFn.FITTING
        return self._eval_loader("val", "eval", self.val_subset() if fitting else None)

    def val_subset(self) -> np.ndarray | None:
        """Val indices scored at each validation during training: the first `val_limit` of an order
        seeded by split_seed, so every validation scores the same products; None = all of them."""
        count = len(self.datasets["val"])
        if self.val_limit is None or self.val_limit >= count:
            return None
        return np.sort(np.random.default_rng(self.split_seed).permutation(count)[: self.val_limit])

    def test_dataloader(self) -> DataLoader:
        return self._eval_loader("test", "eval")

    # ---- resuming (Lightning stores this in every checkpoint) ------------------------------
    def record_trained(self, batches: int | None) -> None:
        """How many train batches of the current epoch have been trained (None: as many as the sampler
        yielded, true before the epoch's first batch is fetched). The loader runs ahead of training
        (loader workers prefetch), so a resume must skip the trained batches, not the yielded ones;
        the training loop reports them (`phi3v.training.callbacks.TrainedBatches`)."""
        self._trained_in_epoch = batches

    def state_dict(self) -> dict:
        if self.train_sampler is None:
            return {}
        state = self.train_sampler.state_dict()
        if self._trained_in_epoch is not None:
            state["batches_yielded"] = self._trained_in_epoch
        return {"train_sampler": state}

    def load_state_dict(self, state: dict) -> None:
        self._restored_sampler = state.get("train_sampler")


class ResumableLoader(DataLoader):
    """The train loader. Lightning resumes mid-epoch only from loaders with `state_dict` and
    `load_state_dict` (else it warns the loader is "not resumable"); this one's state is the
    datamodule's sampler position (counted in trained batches), restored into its batch sampler."""

    def __init__(self, *args, state: Callable[[], dict], **kwargs):
        super().__init__(*args, **kwargs)
        self._state = state

    def state_dict(self) -> dict:
        return self._state().get("train_sampler", {})

    def load_state_dict(self, state: dict) -> None:
        if state:  # the same state the datamodule restored (idempotent)
            self.batch_sampler.load_state_dict(state)
