"""Reading a catalogue table from wherever it lives.

`source` is one of:
  - "synthetic"                      the generated offline catalogue (phi3v.data.synthetic)
  - a local .parquet/.csv/.jsonl/.json file
  - a directory written by `datasets.Dataset.save_to_disk`
  - an image folder: a directory with `metadata.csv` or `metadata.jsonl` (Hugging Face's
    imagefolder layout: a `file_name` column plus the other fields)
  - a Hugging Face hub id such as "DBQ/Burberry.Product.prices.United.States"
Image values that are not http(s) URLs are paths, relative to the table's directory.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa

TABLE_SUFFIXES = {".parquet", ".csv", ".jsonl", ".json"}


@dataclass(frozen=True)
class Table:
    """Raw records plus where relative image paths are resolved from."""

    records: list[dict]
    columns: list[str]
    image_root: Path | None  # None for hub datasets (their images are URLs)


def read_table(source: str, split: str = "train") -> Table:
    path = Path(source).expanduser()
    if path.is_file():
        return _from_arrow(_read_file(path), path.parent)
    if path.is_dir():
        for name in ("metadata.csv", "metadata.jsonl"):
            if (path / name).is_file():
                return _from_arrow(_read_file(path / name), path)
        if (path / "dataset_info.json").is_file() or (path / "state.json").is_file():
            return _from_dataset_dir(path, split)
        raise ValueError(
            f"data.source {source!r} is a directory without metadata.csv, metadata.jsonl or a saved dataset"
        )
    if path.suffix.lower() in TABLE_SUFFIXES or os.sep in source and not _looks_like_hub_id(source):
        raise FileNotFoundError(f"data.source {source!r} does not exist")
    return _from_hub(source, split)


def _read_file(path: Path) -> pa.Table:
    suffix = path.suffix.lower()
    try:
        if suffix == ".parquet":
            import pyarrow.parquet as pq

            return pq.read_table(path)
        if suffix == ".csv":
            import pyarrow.csv as pcsv

            # Types are inferred; a price column with "1,250.00" or "N.A." stays text and
            # validation parses it. Empty cells stay "" (not null) so they are reported as empty.
            return pcsv.read_csv(path, convert_options=pcsv.ConvertOptions(strings_can_be_null=False))
        if suffix in (".jsonl", ".json"):
            import pyarrow.json as pjson

            return pjson.read_json(path)
    except (pa.ArrowInvalid, OSError) as error:
        raise ValueError(f"cannot read data.source {str(path)!r}: {error}") from error
    raise ValueError(f"data.source {str(path)!r}: unsupported file type {suffix!r} (use {sorted(TABLE_SUFFIXES)})")


def _from_arrow(table: pa.Table, root: Path) -> Table:
    columns = table.column_names
    records = table.to_pylist()
    if "file_name" in columns and "imageurl" not in columns:
        for record in records:  # imagefolder layout: expose the file under the default column name
            record["imageurl"] = record["file_name"]
        columns = [*columns, "imageurl"]
    return Table(records, columns, root)


def _from_dataset_dir(path: Path, split: str) -> Table:
    import datasets

    loaded = datasets.load_from_disk(str(path))
    if isinstance(loaded, datasets.DatasetDict):
        if split not in loaded:
            raise ValueError(f"data.split {split!r} not in the saved dataset (has {list(loaded)})")
        loaded = loaded[split]
    return Table(loaded.to_list(), list(loaded.column_names), path)


def _from_hub(source: str, split: str) -> Table:
    import datasets

    try:
        loaded = datasets.load_dataset(source, split=split)
    except Exception as error:  # report the input and the options; the cause stays chained
        raise ValueError(
            f"data.source {source!r} could not be loaded from the hub ({type(error).__name__}: {error}). "
            "Without network access point data.source at a local .parquet/.csv/.jsonl file or a saved dataset."
        ) from error
    return Table(loaded.to_list(), list(loaded.column_names), None)


def _looks_like_hub_id(source: str) -> bool:
    parts = source.split("/")
    return len(parts) == 2 and all(parts) and not source.startswith((".", "/", "~"))
