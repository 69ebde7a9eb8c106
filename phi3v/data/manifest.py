"""Prepare a catalogue: read the table, validate rows, fetch/verify images, write the manifest.

Output in `data_dir`:
  images/            verified image files (downloads are named by URL hash, never by data values)
  manifest.parquet   kept rows: id, image, and each field's typed value (phi3v.data.dataset.manifest_schema)
  dropped.parquet    dropped rows with reason and detail
  report.json        counts: kept, dropped by reason, downloaded, reused
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
from phi3v.task import TaskSpec

from .catalogue import ColumnMap, DroppedRow, ProductRow, validate_rows
from .dataset import manifest_schema
from .download import DownloadItem, DownloadSettings, download_images
from .images import ImageRejected, inspect_image_bytes
from .sources import TABLE_SUFFIXES, read_table
from .spec import SYNTHETIC
from .synthetic import SyntheticSpec, generate_catalogue

log = logging.getLogger(__name__)

MANIFEST, DROPPED, REPORT = "manifest.parquet", "dropped.parquet", "report.json"


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

    def summary(self) -> str:
        lines = [f"{self.source}: {self.rows} rows -> kept {self.kept}, dropped {sum(self.dropped.values())}"]
        lines += [f"  dropped {reason}: {count}" for reason, count in sorted(self.dropped.items())]
        lines.append(f"  images downloaded {self.downloaded}, reused {self.reused}; manifest in {self.data_dir}")
        return "\n".join(lines)


def default_data_dir(source: str) -> Path:
    """data/sample for the synthetic catalogue, else data/<source made filesystem-safe>."""
    if source == SYNTHETIC:
        return Path("data") / "sample"
    name = Path(source).stem if Path(source).suffix.lower() in TABLE_SUFFIXES else source
    return Path("data") / re.sub(r"[^A-Za-z0-9._-]+", "__", name).strip("_.")


def catalogue_signature(source: str, columns: ColumnMap, task: TaskSpec, synthetic: SyntheticSpec, split: str) -> dict:
    """The inputs that determine the manifest (JSON-comparable): the fields' names, columns and types among
    them (their labels and formats only change how answers are written)."""
    fields = [[spec.name, spec.column, spec.type] for spec in task.fields]
    signature = {"source": source, "split": split, "columns": asdict(columns), "fields": fields}
    if source == SYNTHETIC:
        signature["synthetic"] = asdict(synthetic)
    return signature


def prepare_catalogue(
    source: str,
    data_dir: str | os.PathLike,
    columns: ColumnMap,
    task: TaskSpec,
    download: DownloadSettings,
    synthetic: SyntheticSpec,
    split: str = "train",
    progress: bool = True,
) -> PrepareReport:
    """Build `data_dir` from `source` (see phi3v.data.sources): the task's fields read from their columns;
    return the counts."""
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
    kept, image_drops, counts = _attach_images(rows, root, image_dir, download, progress)
    dropped += image_drops

    report = PrepareReport(str(data_dir), source, rows=len(records), kept=len(kept))
    report.signature = catalogue_signature(source, columns, task, synthetic, split)
    report.dropped = dict(Counter(d.reason for d in dropped))
    report.downloaded, report.reused = counts
    _write_outputs(data_dir, schema, kept, dropped, report)
    return report


def _attach_images(rows: list[ProductRow], root: Path | None, image_dir: Path, settings, progress):
    """Download URLs and verify local files; returns (manifest records, drops, (downloaded, reused))."""
    remote = [r for r in rows if r.image.lower().startswith(("http://", "https://"))]
    results = download_images([DownloadItem(r.product_id, r.image) for r in remote], image_dir, settings, progress)
    by_row = {r.source_row: result for r, result in zip(remote, results)}
    kept, dropped = [], []
    for row in rows:
        result = by_row.get(row.source_row)
        if result is not None:
            path, reason, detail = result.path, result.reason, result.detail
            size = (result.width, result.height)
        else:
            path, size, reason, detail = _local_image(row.image, root, settings.max_pixels)
        if reason is not None:
            dropped.append(DroppedRow(row.source_row, row.product_id, row.image, reason, detail))
            continue
        kept.append(_manifest_record(row, path, size, image_dir.parent))
    downloaded = sum(1 for r in results if r.reason is None and r.downloaded)
    reused = sum(1 for r in results if r.reason is None and not r.downloaded)
    return kept, dropped, (downloaded, reused)


def _local_image(value: str, root: Path | None, max_pixels: int):
    """(path, (width, height), reason, detail) of an image given as a path in the table."""
    if "://" in value or value.lower().startswith(("data:", "javascript:")):
        return None, (0, 0), "bad_url", f"only http(s) URLs or local paths are accepted, got {value!r}"
    path = Path(value).expanduser()
    if not path.is_absolute():
        if root is None:
            return None, (0, 0), "bad_url", f"relative image path {value!r} in a hub dataset"
        path = root / path
    try:
        _, width, height = inspect_image_bytes(path.read_bytes(), max_pixels=max_pixels)
    except OSError as error:
        return None, (0, 0), "unreadable", f"{path}: {error}"
    except ImageRejected as problem:
        return None, (0, 0), problem.reason, f"{path}: {problem.detail}"
    return path, (width, height), None, ""


def _manifest_record(row: ProductRow, path: Path, size: tuple[int, int], data_dir: Path) -> dict:
    try:
        stored = str(path.resolve().relative_to(data_dir.resolve()))
    except ValueError:
        stored = str(path.resolve())  # kept in place outside the data dir
    return {
        "product_id": row.product_id,
        **row.values,
        "image_path": stored,
        "image_width": size[0],
        "image_height": size[1],
        "image_url": row.image,
        "source_row": row.source_row,
    }


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
