"""`DataSpec`: the catalogue, its split and how it is batched. `ProductDataModule(spec)` takes it, and
it is the schema of `data` in conf/ (phi3v/config_schema.py registers the class itself): a key is added
by adding a field here. Torch-free, so composing a config answers a typo in about a second.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from phi3v.task import PhotoSpec, TaskSpec

from .catalogue import ColumnMap
from .download import DownloadSettings
from .splits import check_fractions
from .synthetic import SyntheticSpec

SYNTHETIC = "synthetic"


@dataclass(frozen=True)
class DataSpec:
    """Image catalogues (Burberry, other DBQ brands, your own table) and the fields read from their photos.

    Args:
        source: "synthetic", a hub id, or a local table / saved dataset / image folder.
        data_dir: where images and the manifest go; default `data/<name derived from source>`.
        columns: which table columns hold the image(s) and the id (the fields' columns are in `task`).
        photos: how many of an item's photos are used, their image-token cap, and what an unreadable
            one does (`PhotoSpec`; README "Several photos per item").
        split: the table split to read from a hub or saved dataset.
        val_fraction, test_fraction, split_seed: product-grouped split of the kept rows.
        limit: use at most this many rows (chosen with split_seed) for quick runs.
        task: the question, the answer's typed fields (each with its catalogue column) and the answer
            template (phi3v.task.TaskSpec).
        batch_size, eval_batch_size: per-device batch sizes (train / val and test).
        global_batch_size: samples per optimizer step over all devices; the gradient accumulation that
            gives it on a run's devices is `accumulation` (None: hardware.accumulate_grad_batches as set).
        val_limit: products scored at each validation during training, the same ones every time (the
            first of an order seeded by split_seed); None = the whole split. Validation outside
            training (train.py runs one after fit when this is set) scores the whole split.
        num_workers, pin_memory, persistent_workers: DataLoader settings (persistent workers survive
            between epochs and evaluations; they are off without workers).
        group_by_length: batch samples of similar token count (much less padding).
        strict_images: an unreadable image fails the run (naming it) instead of being skipped.
        max_pixels: decompression-bomb guard.
        download, synthetic: settings of the downloader and of the synthetic catalogue.
    """

    source: str = SYNTHETIC
    data_dir: str | None = None
    columns: ColumnMap = field(default_factory=ColumnMap)
    photos: PhotoSpec = field(default_factory=PhotoSpec)
    split: str = "train"
    val_fraction: float = 0.1
    test_fraction: float = 0.1
    split_seed: int = 0
    limit: int | None = None
    task: TaskSpec = field(default_factory=TaskSpec)
    batch_size: int = 4
    eval_batch_size: int = 8
    global_batch_size: int | None = None
    val_limit: int | None = None
    num_workers: int = 0
    pin_memory: bool = False
    persistent_workers: bool = True
    group_by_length: bool = True
    strict_images: bool = False
    max_pixels: int = 64_000_000
    download: DownloadSettings = field(default_factory=DownloadSettings)
    synthetic: SyntheticSpec = field(default_factory=SyntheticSpec)

    def __post_init__(self) -> None:
        check_fractions(self.val_fraction, self.test_fraction)
        if self.batch_size < 1 or self.eval_batch_size < 1:
            raise ValueError(
                f"data.batch_size and data.eval_batch_size must be >= 1, got {self.batch_size}, {self.eval_batch_size}"
            )
        for key in ("global_batch_size", "val_limit"):
            value = getattr(self, key)
            if value is not None and value < 1:
                raise ValueError(f"data.{key} must be >= 1 or null, got {value}")

    def accumulation(self, world: int, num_nodes: int, configured: int) -> int:
        """Batches each of `world` processes (over `num_nodes` machines) accumulates per optimizer step:
        `configured` (hardware.accumulate_grad_batches), or with global_batch_size set, global /
        (batch_size x world), so a recipe trains the same on 1 and 8 GPUs. Raises ValueError, saying
        what to set, when the global batch does not divide or contradicts `configured`."""
        if self.global_batch_size is None:
            return configured
        per_step = self.batch_size * world
        if self.global_batch_size % per_step:
            fits = [b for b in range(self.batch_size, 0, -1) if self.global_batch_size % (b * world) == 0]
            fix = f"set data.batch_size={fits[0]}" if fits else (
                f"set data.global_batch_size to a multiple of {world} (devices x nodes)")
            raise ValueError(
                f"data.global_batch_size={self.global_batch_size} is not a multiple of data.batch_size x devices x "
                f"hardware.num_nodes = {self.batch_size} x {world // num_nodes} x {num_nodes} = {per_step}: {fix} "
                "(or data.global_batch_size=null to use hardware.accumulate_grad_batches)"
            )
        derived = self.global_batch_size // per_step
        if configured not in (1, derived):
            raise ValueError(
                f"hardware.accumulate_grad_batches={configured} contradicts data.global_batch_size="
                f"{self.global_batch_size} (which gives {derived} at data.batch_size={self.batch_size} on {world} "
                "devices): set only one of them"
            )
        return derived
