"""Prepare a catalogue: read the table, validate rows, fetch/verify images, write the manifest.

Output in `data_dir`:
  images/            verified image files (downloads are named by URL hash, never by data values)
  manifest.parquet   kept rows: id, photos, and each field's typed value (phi3v.data.dataset.manifest_schema)
  dropped.parquet    dropped rows with reason and detail
  report.json        counts: kept, dropped by reason, downloaded, reused, and what happened to the photos
                     of items with several (phi3v.data.photo_files.PhotoCounts)
Running it again downloads nothing that is already valid on disk.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from phi3v.files import atomic_write, atomic_write_text
from phi3v.task import PhotoSpec, TaskSpec

from .catalogue import ColumnMap, DroppedRow, ProductRow, validate_rows
from .dataset import manifest_schema
from .download import DownloadSettings
from .photo_files import Photo, PhotoCounts, attach_photos
from .sources import TABLE_SUFFIXES, read_table
from .spec import SYNTHETIC
from .synthetic import SyntheticSpec, generate_catalogue

log = logging.getLogger(__name__)

MANIFEST, DROPPED, REPORT = "manifest.parquet", "dropped.parquet", "report.json"
ONE_PHOTO_RULES = PhotoSpec()  # the default photo rules (data.photos): what a one-photo catalogue is prepared with


@dataclass
class PrepareReport:
    data_dir: str
    source: str
    rows: int = 0
    kept: int = 0
    dropped: dict[str, int] = field(default_factory=dict)
    downloaded: int = 0
    reused: int = 0
    signature: dict = field(default_factory=dict)  # what was prepared; a different one re-prepares
    photos: PhotoCounts = field(default_factory=PhotoCounts)

    def summary(self, photos: PhotoSpec | None = None) -> str:
        lines = [f"{self.source}: {self.rows} rows -> kept {self.kept}, dropped {sum(self.dropped.values())}"]
        lines += [f"  dropped {reason}: {count}" for reason, count in sorted(self.dropped.items())]
        if self.photos.several:  # a one-photo catalogue's summary reads as it always did
            lines.append(self.photos.summary(photos or PhotoSpec()))
        lines.append(f"  images downloaded {self.downloaded}, reused {self.reused}; manifest in {self.data_dir}")
        return "\n".join(lines)


def default_data_dir(source: str) -> Path:
    """data/sample for the synthetic catalogue, else data/<source made filesystem-safe>."""
    if source == SYNTHETIC:
        return Path("data") / "sample"
    name = Path(source).stem if Path(source).suffix.lower() in TABLE_SUFFIXES else source
    return Path("data") / re.sub(r"[^A-Za-z0-9._-]+", "__", name).strip("_.")


def catalogue_signature(
    source: str, columns: ColumnMap, task: TaskSpec, synthetic: SyntheticSpec, split: str,
    photos: PhotoSpec = ONE_PHOTO_RULES,
) -> dict:
    """The inputs that determine the manifest, as JSON reads them back (a list of image columns is a list): the
    fields' names, columns and types among them (their labels and formats only change how answers are written).
    The photos' image-token cap is applied when the data is set up (it needs the processor), not here."""
    fields = [[spec.name, spec.column, spec.type] for spec in task.fields]
    signature = {"source": source, "split": split, "columns": asdict(columns), "fields": fields,
                 "photos": {"max_per_item": photos.max_per_item, "bad_photo": photos.bad_photo}}
    if source == SYNTHETIC:
        signature["synthetic"] = asdict(synthetic)
    return json.loads(json.dumps(signature))


def prepare_catalogue(
    source: str,
    data_dir: str | os.PathLike,
    columns: ColumnMap,
    task: TaskSpec,
    download: DownloadSettings,
    synthetic: SyntheticSpec,
    split: str = "train",
    progress: bool = True,
    photos: PhotoSpec = ONE_PHOTO_RULES,
) -> PrepareReport:
    """Build `data_dir` from `source` (see phi3v.data.sources): the task's fields read from their columns;
    `photos` says which of an item's photos are kept (phi3v.data.photo_files). Return the counts."""
    data_dir = Path(data_dir)
    schema = manifest_schema(task)  # a field named like a manifest column fails before any work
    image_dir = data_dir / "images"
    image_dir.mkdir(parents=True, exist_ok=True)
    if source == SYNTHETIC:
        records = generate_catalogue(synthetic, image_dir)
        available, root = (list(records[0]) if records else []), image_dir
    else:
        table = read_table(source, split)
        records, available, root = table.records, table.columns, table.image_root
    columns.check(available)
    task.check_columns(available)
    rows, dropped = validate_rows(records, columns, task)
    kept, image_drops, photo_counts, fetched = attach_photos(rows, root, image_dir, download, photos, progress)
    dropped += image_drops

    report = PrepareReport(str(data_dir), source, rows=len(records), kept=len(kept), photos=photo_counts)
    report.signature = catalogue_signature(source, columns, task, synthetic, split, photos)
    report.dropped = dict(Counter(d.reason for d in dropped))
    report.downloaded, report.reused = fetched
    records = [_manifest_record(row, row_photos, data_dir) for row, row_photos in kept]
    _write_outputs(data_dir, schema, records, dropped, report)
    return report


def _manifest_record(row: ProductRow, photos: list[Photo], data_dir: Path) -> dict:
    return {
        "product_id": row.product_id,
        **row.values,
        "image_paths": [_stored(photo.path, data_dir) for photo in photos],
        "image_widths": [photo.width for photo in photos],
        "image_heights": [photo.height for photo in photos],
        "image_urls": [photo.value for photo in photos],
        "source_row": row.source_row,
    }


def _stored(path: Path, data_dir: Path) -> str:
    try:
        return str(path.resolve().relative_to(data_dir.resolve()))
    except ValueError:
        return str(path.resolve())  # kept in place outside the data dir


def _write_outputs(
    data_dir: Path, schema: pa.Schema, kept: list[dict], dropped: list[DroppedRow], report: PrepareReport
) -> None:
    _atomic_parquet(pa.Table.from_pylist(kept, schema=schema), data_dir / MANIFEST)
    drop_schema = pa.schema(
        [("source_row", pa.int64()), ("product_id", pa.string()), ("image", pa.string()),
         ("reason", pa.string()), ("detail", pa.string())]
    )
    _atomic_parquet(pa.Table.from_pylist([asdict(d) for d in dropped], schema=drop_schema), data_dir / DROPPED)
    atomic_write_text(data_dir / REPORT, json.dumps(asdict(report), indent=1))


def _atomic_parquet(table: pa.Table, path: Path) -> None:
    with atomic_write(path, "wb") as handle:
        pq.write_table(table, handle)
