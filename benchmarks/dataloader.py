"""Data pipeline figures on the synthetic catalogue: `python benchmarks/dataloader.py`.

1. samples/s through read -> process -> collate (the train loader, batch size 8) at num_crops 16
   and 4, with 0 and 2 workers;
2. share of padding tokens per batch with and without length grouping (target <= 5% grouped);
3. peak RSS of setting up and iterating the data module for a 3k-row vs a 100k-row catalogue
   (target: within 10%), each measured in a fresh process.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BATCH_SIZE = 8
TIMED_BATCHES = 12


def prepared_catalogue(directory: Path, products: int) -> Path:
    from phi3v.data.datamodule import ProductDataModule
    from phi3v.data.spec import DataSpec
    from phi3v.data.synthetic import SyntheticSpec

    ProductDataModule(DataSpec(data_dir=str(directory), synthetic=SyntheticSpec(num_products=products))).prepare_data()
    return directory


def data_module(directory: Path, num_crops: int, workers: int, group_by_length: bool = True, products: int = 3000):
    from phi3v.data.datamodule import ProductDataModule
    from phi3v.data.spec import DataSpec
    from phi3v.data.synthetic import SyntheticSpec
    from phi3v.modeling import Phi3VProcessor, preset_dir

    module = ProductDataModule(DataSpec(
        data_dir=str(directory), synthetic=SyntheticSpec(num_products=products), batch_size=BATCH_SIZE,
        num_workers=workers, group_by_length=group_by_length, val_fraction=0.0, test_fraction=0.0,
    ))
    module.connect(Phi3VProcessor.from_pretrained(preset_dir("tiny"), num_crops=num_crops))
    module.setup("fit")
    return module


def throughput(directory: Path, num_crops: int, workers: int) -> float:
    loader = data_module(directory, num_crops, workers).train_dataloader()
    batches = iter(loader)
    next(batches)  # worker start-up and first-touch costs are not per-sample throughput
    start = time.perf_counter()
    samples = 0
    for _ in range(TIMED_BATCHES):
        samples += next(batches)["input_ids"].shape[0]
    return samples / (time.perf_counter() - start)


def padding_shares(directory: Path) -> tuple[float, float]:
    from phi3v.data.sampler import padding_share

    shares = []
    for grouped in (True, False):
        module = data_module(directory, 16, 0, group_by_length=grouped)
        module.train_dataloader()
        shares.append(padding_share(module.lengths["train"], list(module.train_sampler)))
    return shares[0], shares[1]


def grown_catalogue(source: Path, target: Path, rows: int) -> Path:
    """A catalogue of `rows` rows reusing the 3k images (new ids), to isolate table-size effects."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    base = pq.read_table(source / "manifest.parquet")
    repeats = -(-rows // base.num_rows)
    table = pa.concat_tables([base] * repeats).slice(0, rows)
    ids = pa.array([f"{i:07d}" for i in range(rows)])
    table = table.set_column(table.schema.get_field_index("product_id"), "product_id", ids)
    photos = table.column("image_paths").to_pylist()
    paths = pa.array([[str((source / path).resolve()) for path in paths] for paths in photos])
    table = table.set_column(table.schema.get_field_index("image_paths"), "image_paths", paths)
    target.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, target / "manifest.parquet")
    report = json.loads((source / "report.json").read_text())
    (target / "report.json").write_text(json.dumps(report))
    (target / "images").mkdir(exist_ok=True)
    return target


def peak_rss_child(directory: str, products: int) -> None:
    """Runs in a fresh process: set up, iterate 30 batches, print peak RSS in MiB."""
    module = data_module(Path(directory), 16, 0, products=products)
    batches = iter(module.train_dataloader())
    for _ in range(30):
        next(batches)
    print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)


def peak_rss(directory: Path, rows: int) -> float:
    code = f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); import dataloader; " \
           f"dataloader.peak_rss_child({str(directory)!r}, 3000)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows-large", type=int, default=100_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        base = prepared_catalogue(Path(tmp) / "sample", 3000)
        print(f"synthetic catalogue: 3000 products in {base}\n")
        print(f"{'num_crops':>9} {'workers':>7} {'samples/s':>10}")
        for num_crops in (16, 4):
            for workers in (0, 2):
                print(f"{num_crops:>9} {workers:>7} {throughput(base, num_crops, workers):>10.1f}")
        grouped, plain = padding_shares(base)
        print(f"\npadding share at batch size {BATCH_SIZE}: grouped {grouped:.2%}, ungrouped {plain:.2%} "
              f"(target grouped <= 5%)")
        small = grown_catalogue(base, Path(tmp) / "rows-3k", 3000)
        large = grown_catalogue(base, Path(tmp) / "rows-large", args.rows_large)
        rss_small, rss_large = peak_rss(small, 3000), peak_rss(large, args.rows_large)
        change = rss_large / rss_small - 1
        print(f"\npeak RSS: 3,000 rows {rss_small:.0f} MiB, {args.rows_large:,} rows {rss_large:.0f} MiB "
              f"({change:+.1%}; target within 10%)")


if __name__ == "__main__":
    main()
