"""ProductDataModule: a prepared catalogue as train/val/test loaders for Phi-3-V.

It takes a `DataSpec` (the `data` node of conf/). The data config never knows the model:
`connect(processor)` injects what batching needs (the tokenizer, num_crops) after both are built. Entry
points ask it for a split's products (`split_products`, `truth`, and `run_products` for the split a
recorded run made) and how many photos an item has at most (`most_photos`), never for its tables.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from pathlib import Path

import lightning as L
import numpy as np
import pyarrow.compute as pc
import torch
from lightning.pytorch.trainer.states import TrainerFn
from torch.utils.data import DataLoader

from phi3v.modeling import Phi3VProcessor

from .collate import Phi3VCollator
from .dataset import ProductDataset, manifest_schema, read_manifest
from .eval_sampler import EvalBatchSampler
from .manifest import MANIFEST, REPORT, PrepareReport, catalogue_signature, default_data_dir, prepare_catalogue
from .photo_tokens import cap_image_tokens, check_question_fits
from .sampler import LengthGroupedBatchSampler
from .spec import DataSpec
from .splits import SPLITS, assign_splits, limited_rows, run_split_rows, write_splits

log = logging.getLogger(__name__)
LENGTH_CHUNK = 4096  # rows counted per processor call: bounded memory for 100k-row catalogues


class ProductDataModule(L.LightningDataModule):
    """A catalogue (Burberry, other DBQ brands, your own table) as train/val/test loaders.

    Args:
        spec: the catalogue, its split and its batching (`DataSpec`: the keys of `data` in conf/).
        output_dir: where the chosen splits are recorded (the run dir: splits.json); None to skip.
    """

    def __init__(self, spec: DataSpec | None = None, output_dir: str | os.PathLike | None = None):
        super().__init__()
        self.spec = spec = spec or DataSpec()
        self.data_dir = Path(spec.data_dir) if spec.data_dir else default_data_dir(spec.source)
        self.task = spec.task
        manifest_schema(spec.task)  # a field named like a manifest column fails here, before any work
        self.loader_options = dict(
            num_workers=spec.num_workers, pin_memory=spec.pin_memory,
            persistent_workers=spec.persistent_workers and spec.num_workers > 0,
            # Each iterator over a loader draws its workers' base seed from this generator instead of torch's
            # global RNG, which a resumed run restores for LoRA dropout: creating the loaders then leaves the
            # restored state where the interrupted run had it, and dropout continues exactly.
            generator=torch.Generator().manual_seed(spec.split_seed),
        )
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
        spec = self.spec
        report = prepare_catalogue(spec.source, self.data_dir, spec.columns, spec.task, spec.download, spec.synthetic,
                                   spec.split, photos=spec.photos)
        log.info(report.summary(spec.photos))
        return report

    def _manifest_is_current(self) -> bool:
        report = self.data_dir / REPORT
        if not (self.data_dir / MANIFEST).is_file() or not report.is_file():
            return False
        spec = self.spec
        signature = catalogue_signature(spec.source, spec.columns, spec.task, spec.synthetic, spec.split, spec.photos)
        return json.loads(report.read_text()).get("signature") == signature

    def _manifest(self, limited: bool):
        """The manifest (its data.limit rows when `limited`), each item's photos within
        data.photos.max_image_tokens, checked against the question's image tags."""
        manifest = read_manifest(self.data_dir / MANIFEST, self.task)
        if limited:
            manifest = manifest.take(limited_rows(manifest.num_rows, self.spec.limit, self.spec.split_seed))
        manifest, _ = cap_image_tokens(manifest, self.spec.photos, self.processor.image_processor.num_image_tokens)
        check_question_fits(self.task.question, manifest, "data.task.question")
        return manifest

    # ---- setting up ----------------------------------------------------------------------
    def setup(self, stage: str | None = None) -> None:
        if self.processor is None:
            raise RuntimeError("call datamodule.connect(processor) before setup()")
        if self.datasets:
            return
        manifest = self._manifest(limited=True)
        ids = manifest.column("product_id").to_pylist()
        splits = assign_splits(ids, self.spec.val_fraction, self.spec.test_fraction, self.spec.split_seed)
        if self.output_dir is not None:
            write_splits(self.output_dir, ids, splits)
        for name in SPLITS:
            rows = np.flatnonzero(splits == name)
            table = manifest.take(rows)
            self.datasets[name] = self._dataset(table)
            self.lengths[name] = self.token_lengths(self.datasets[name])
        counts = {name: len(d) for name, d in self.datasets.items()}
        log.info("data %s: %s", self.spec.source, counts)

    # ---- the products of a split ---------------------------------------------------------------
    def split_products(self, split: str) -> ProductDataset:
        """The products of `split` as this datamodule assigns them (data.val_fraction, test_fraction,
        split_seed), in manifest order."""
        self.setup()
        return self.datasets[split]

    def most_photos(self) -> int:
        """The most photos an item of this run has, over every split (1 when no split has an item)."""
        self.setup()
        counts = [pc.max(pc.list_value_length(dataset.table.column("image_paths"))).as_py()
                  for dataset in self.datasets.values() if len(dataset)]
        return max(counts, default=1)

    def truth(self, split: str) -> list[dict]:
        """The true values of every product of `split`, each keyed by field name (baselines)."""
        return self.split_products(split).truth()

    def run_products(self, split: str, run_dir: str | os.PathLike) -> tuple[ProductDataset, str]:
        """This catalogue's products in `split` of the run recorded in `run_dir` (its splits.json), in
        manifest order, or all of them when the run never saw any of its products; and a sentence
        saying which. Needs the manifest (`prepare_data`) and the processor (`connect`), not `setup`."""
        manifest = self._manifest(limited=False)
        rows, description = run_split_rows(manifest.column("product_id").to_pylist(), run_dir, split,
                                           f"{self.spec.source} ({self.data_dir})")
        return self._dataset(manifest.take(rows)), description

    def _dataset(self, table) -> ProductDataset:
        return ProductDataset(table, self.data_dir, self.task, self.spec.strict_images, self.spec.max_pixels)

    def token_lengths(self, dataset: ProductDataset) -> np.ndarray:
        """Exact token count of every sample (prompt + images + answer + <|end|>), as the collator
        builds it (the processor counts), from the manifest's image sizes without opening images."""
        lengths = np.zeros(len(dataset), dtype=np.int64)
        table, names = dataset.table, self.task.names
        for start in range(0, len(dataset), LENGTH_CHUNK):
            rows = table.slice(start, LENGTH_CHUNK)
            sizes = [list(zip(widths, heights)) for widths, heights in
                     zip(rows.column("image_widths").to_pylist(), rows.column("image_heights").to_pylist())]
            values = zip(*(rows.column(name).to_pylist() for name in names))
            answers = [self.task.answer_for(dict(zip(names, row))) for row in values]
            photos = np.array([len(row) for row in sizes])
            for count in np.unique(photos):  # items of one photo count share a prompt
                at = np.flatnonzero(photos == count)
                lengths[start + at] = self.processor.sequence_lengths(
                    self.task.prompt(int(count)), [sizes[i] for i in at], [answers[i] for i in at])
        return lengths

    # ---- loaders -------------------------------------------------------------------------
    def train_dataloader(self) -> DataLoader:
        self.train_sampler = LengthGroupedBatchSampler(
            self.lengths["train"], self.spec.batch_size, shuffle=True, group_by_length=self.spec.group_by_length,
            seed=self.spec.split_seed,
        )
        if self._restored_sampler is not None:  # resuming mid-epoch: skip the batches already trained
            self.train_sampler.load_state_dict(self._restored_sampler)
            self._restored_sampler = None
        return ResumableLoader(
            self.datasets["train"], batch_sampler=self.train_sampler,
            collate_fn=Phi3VCollator(self.processor, self.task, "train"), **self.loader_options,
            state=self.state_dict,
        )

    def _eval_loader(self, split: str, mode: str, indices: np.ndarray | None = None) -> DataLoader:
        """Each rank gets its share of the split, or of its `indices` (see EvalBatchSampler): equal batch
        counts on all ranks."""
        if len(self.datasets[split]) == 0:  # e.g. data.val_fraction=0: no batches
            return DataLoader(self.datasets[split], batch_size=self.spec.eval_batch_size)
        sampler = EvalBatchSampler(
            self.lengths[split], self.spec.eval_batch_size, group_by_length=self.spec.group_by_length, indices=indices
        )
        return DataLoader(
            self.datasets[split], batch_sampler=sampler,
            collate_fn=Phi3VCollator(self.processor, self.task, mode), **self.loader_options,
        )

    def val_dataloader(self) -> DataLoader:
        """During training the `val_limit` subset (see val_subset); otherwise the whole split."""
        fitting = self.trainer is not None and self.trainer.state.fn == TrainerFn.FITTING
        return self._eval_loader("val", "eval", self.val_subset() if fitting else None)

    def val_subset(self) -> np.ndarray | None:
        """Val indices scored at each validation during training: the first `val_limit` of an order
        seeded by split_seed, so every validation scores the same products; None = all of them."""
        count = len(self.datasets["val"])
        limit = self.spec.val_limit
        if limit is None or limit >= count:
            return None
        return np.sort(np.random.default_rng(self.spec.split_seed).permutation(count)[:limit])

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
