"""Training throughput and memory per strategy: one process vs DDP vs FSDP, same global batch.

Run: `python benchmarks/scaling.py` (CPU, the tiny model, 2 processes for ddp/fsdp), or on a GPU box
`python benchmarks/scaling.py --devices 8 --accelerator gpu --precision bf16-mixed -- model=phi3v`
(anything after `--` is passed to every train.py run). Each run trains `--steps` steps on the
synthetic catalogue without evaluation; figures are medians over the steps after the first two
(warm-up), read from the run's CSV log: samples/s and tokens/s of the whole global batch, and the
peak memory of rank 0 (GPU: max allocated; CPU: resident set size).
"""

from __future__ import annotations

import argparse
import csv
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
WARMUP_STEPS = 2


def run(name: str, overrides: list[str], out: Path) -> dict:
    run_dir = out / name.split()[0]  # "single", "ddp", "fsdp": Hydra override values take no spaces
    command = [sys.executable, str(REPO / "train.py"), f"hydra.run.dir={run_dir}", "logger=csv", "test=false",
               "export=false", "trainer.limit_val_batches=0", "checkpoint.monitor=null",
               "trainer.log_every_n_steps=1", *overrides]
    start = time.perf_counter()
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"{name} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    with open(run_dir / "csv" / "metrics.csv") as handle:
        rows = [row for row in csv.DictReader(handle) if row.get("train/samples_per_s")]
    measured = rows[WARMUP_STEPS:] or rows

    def median(key: str) -> float:
        return statistics.median(float(row[key]) for row in measured if row.get(key))

    return {"name": name, "samples/s": median("train/samples_per_s"), "tokens/s": median("train/tokens_per_s"),
            "peak GiB": max(float(row["train/peak_memory_gib"]) for row in rows), "wall s": time.perf_counter() - start}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--devices", type=int, default=2, help="processes for ddp and fsdp")
    parser.add_argument("--accelerator", default="cpu")
    parser.add_argument("--precision", default="32-true")
    parser.add_argument("--batch", type=int, default=4, help="per-device batch of ddp/fsdp")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("extra", nargs="*", help="train.py overrides for every run (after --)")
    args = parser.parse_args()
    common = [f"hardware.accelerator={args.accelerator}", f"hardware.precision={args.precision}",
              f"trainer.max_steps={args.steps}", "data.limit=512", *args.extra]
    global_batch = args.batch * args.devices
    settings = {
        f"single (batch {global_batch})": ["hardware.devices=1", f"data.batch_size={global_batch}"],
        f"ddp x{args.devices} (batch {args.batch})": ["hardware=ddp", f"hardware.devices={args.devices}",
                                                     f"data.batch_size={args.batch}"],
        f"fsdp x{args.devices} (batch {args.batch})": ["hardware=fsdp", f"hardware.devices={args.devices}",
                                                      f"data.batch_size={args.batch}"],
    }
    with tempfile.TemporaryDirectory() as out:
        results = [run(name, [*overrides, *common], Path(out)) for name, overrides in settings.items()]
    print(f"accelerator {args.accelerator}, precision {args.precision}, global batch {global_batch}, "
          f"{args.steps} steps (median after {WARMUP_STEPS}); extra: {' '.join(args.extra) or '-'}")
    print(f"{'setting':<24} {'samples/s':>10} {'tokens/s':>10} {'peak GiB (rank 0)':>18} {'wall s':>7}")
    for r in results:
        print(f"{r['name']:<24} {r['samples/s']:>10.2f} {r['tokens/s']:>10.0f} {r['peak GiB']:>18.2f} "
              f"{r['wall s']:>7.0f}")


if __name__ == "__main__":
    main()
