"""The GPU check of issue 23: the cells that decide the GPU recipe and a short real-size training run,
in one call of at most 8 minutes on one H100 or H200. Started by `benchmarks/gpu_check.sh` (which
installs the wheels a bare offline GPU box lacks); here `--device cpu` runs it on the tiny model.

Phases, most decisive first; each runs in its own process (Liger's RoPE swap is process-wide, and
each process's peak memory is its own) under a deadline from the budget (`--budget-s`, counted
from `--started`), and what does not fit is recorded as skipped, never left out silently:
1. kernels-test: tests/test_kernels.py, Liger against PyTorch on the real-width model at depth 2
   (GPU only).
2. eager: bf16 fidelity (the random real-size model's logits in bf16 vs float32 on one 16-crop
   sample: max / mean absolute difference, top-1 agreement), then 16 crops x batch 4 and 1 x
   checkpointing {off, on, selective, offload} with PyTorch's kernels, and LoRA's own costs at
   batch 4 with the recipe's checkpointing (`peft-cast`: PEFT's float32 input copy; `dropout-0`).
3. liger: the same cells with model.spec.kernels=liger.
4. train: `train.py` with the recipe's settings on the random real-size model (synthetic catalogue
   of 320 products at 1000x1000, a fifth of them val: the recipe's 64-product `data.val_limit`):
   6 optimizer steps of 4 x 4 accumulated batches with a validation every 12 batches (two); its
   step and validation times give the validation share of a real run at the recipe's cadence (a
   validation every half epoch of Burberry's ~2,400 training photos: 300 batches of 4).
5. liger+compile: the cells of 3 with each decoder and CLIP layer compiled (regional torch.compile),
   last because compiling is the least predictable; selective first, since on the CPU (torch 2.13)
   full checkpointing did not compile (SDPA is a random op inside a recomputed region) and offload
   compiled nothing (a graph break at save_on_cpu): a failing cell is recorded with its error.
   (`eager+compile` can be added with `--phases`.)

MFU as benchmarks/gpu.py counts it. "Fits 80 GB" = peak reserved <= 76 GiB (an 80 GB card holds
79.6 GiB, less the CUDA context); "<= 24 GB" = peak reserved <= 24 GiB.

Writes gpu_check.md and gpu_check.json to `--out` (default: benchmarks/results/ on a GPU, a new
temporary directory on the CPU); the phases' own files and the training run go to `--workdir`.
"""

from __future__ import annotations

import argparse
import csv
import gc
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

import gpu  # noqa: E402  (benchmarks/gpu.py)

from phi3v.modeling import IGNORE_INDEX  # noqa: E402
from phi3v.modeling.kernels import apply_kernels, kernels_problem  # noqa: E402
from phi3v.modeling.model_spec import ModelSpec, load_processor  # noqa: E402
from phi3v.modeling.random_weights import build_random_model  # noqa: E402
from phi3v.training.lora import apply_lora  # noqa: E402

GROUPS = {"eager": ("none", False), "liger": ("liger", False), "liger+compile": ("liger", True),
          "eager+compile": ("none", True)}
PHASES = ("kernels-test", "eager", "liger", "train", "liger+compile")
# Seconds each phase may take on the GPU: 460, and ~20 for the wheel install, make the 480 s budget
# (a phase may overrun its deadline by 30 s, which later phases lose; the last gets what is left).
# Estimates from the H200's 0.2-1.0 s steps, ~21 s random-model builds, ~15 s of imports a process
# and a first compile of each layer type.
PHASE_SECONDS = {"kernels-test": 45, "eager": 120, "liger": 65, "train": 160, "liger+compile": 70,
                 "eager+compile": 80}
FITS_80GB_GIB, FITS_24GB_GIB = 76.0, 24.0
TARGETS = {"mfu_80gb": 0.40, "mfu_24gb": 0.32, "validation_share": 0.05}
# The recipe's validation cadence on Burberry: ~2,400 training photos (3,040 rows less val and
# test), batch 4, trainer.val_check_interval 0.5 (conf/experiment/burberry_lora.yaml).
TRAIN_PHOTOS, RECIPE_BATCH, VALIDATIONS_PER_EPOCH = 2400, 4, 2


def slug(phase: str) -> str:
    """A phase's name in file names (letters, digits, '.', '_', '-': what the GPU box sends back)."""
    return phase.replace("+", "-")


# ---- the cells --------------------------------------------------------------------------------------
def plan(group: str, device: str) -> list[gpu.Cell]:
    """The cells of a group, in the order they run (the likely fastest first under compile)."""
    kernels, compiled = GROUPS[group]
    crops, batches = (16, (4, 1)) if device == "cuda" else (1, (2,))
    modes = ("selective", "off", "on", "offload") if compiled else ("off", "on", "selective", "offload")
    cells = []
    for batch in batches:
        cells += [gpu.Cell("lora", crops, batch, mode, "sdpa", kernels=kernels, compiled=compiled)
                  for mode in modes]
        if group == "eager" and batch == batches[0]:  # LoRA's own costs, with the recipe's checkpointing
            cells += [gpu.Cell("lora", crops, batch, "on", "sdpa", lora=variant)
                      for variant in ("peft-cast", "dropout-0")]
    return cells


def cells_worker(args) -> None:
    """One group's cells in this process; writes <workdir>/cells_<group>.json after each cell."""
    device, preset, dtype, _, _, name, peak = gpu.settings(args.device, None, None, None, None)
    warmup, steps = (2, 3) if device.type == "cuda" else (0, 1)  # compiled cells compile in their first step
    cells = plan(args.worker, device.type)
    path = Path(args.workdir) / f"cells_{slug(args.worker)}.json"
    result = {"group": args.worker, "device": name, "peak_tflops": peak, "warmup": warmup, "steps": steps,
              "cells": [], "fidelity": None}

    def save(cell=None) -> None:
        if cell is not None:
            result["cells"].append(asdict(cell))
            print(gpu.markdown([cell], "").splitlines()[-1], flush=True)
        path.write_text(json.dumps(result, indent=1))

    kernels, compiled = GROUPS[args.worker]
    started = time.perf_counter()
    base = build_random_model(preset, seed=0, dtype=dtype, device=device)
    result["built_s"] = time.perf_counter() - started
    if args.worker == "eager":
        result["fidelity"] = bf16_fidelity(base, preset, device)
        save()
    apply_kernels(base, None if kernels == "none" else kernels)
    model = apply_lora(base, gpu.recipe_lora())
    if compiled:
        gpu.compile_layers(model, "inductor" if device.type == "cuda" else "eager")
    gpu.run_cells(model, preset, cells, device, warmup, steps, peak, args.deadline, save)
    save()


def bf16_fidelity(base, preset: str, device: torch.device) -> dict:
    """The random model's logits with bf16 weights, computed in bf16 as served (`base` when it is
    bf16), against the same model in float32 (TF32 off) on one 16-crop sample (1 crop on the CPU),
    at every position and at the answer's. A random model's logits are nearly flat, so its top-1
    agreement is a lower bound for a trained model's, whose top token leads by far more than bf16's
    rounding."""
    num_crops = 16 if device.type == "cuda" else 1
    if base.dtype != torch.bfloat16:  # the CPU run's cells use float32
        base = build_random_model(preset, seed=0, dtype=torch.bfloat16, device=device)
    batch = gpu.make_batch(load_processor(ModelSpec(name_or_path=preset, num_crops=num_crops)), 1, device)
    labels = batch.pop("labels")
    tf32 = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        reference = build_random_model(preset, seed=0, dtype=torch.float32, device=device).eval()
        with torch.no_grad():
            full = reference(**batch, use_cache=False).logits.float()
        del reference
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
        with torch.no_grad():
            half = base.eval()(**batch, use_cache=False).logits.float()
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = tf32
    difference = (half - full).abs()
    answer = (labels[:, 1:] != IGNORE_INDEX)[0]  # positions that predict an answer token
    targets = labels[0, 1:][answer]

    def loss(logits):
        return float(torch.nn.functional.cross_entropy(logits[0, :-1][answer], targets))

    agree = half.argmax(-1) == full.argmax(-1)
    return {"tokens": int(full.shape[1]), "answer_tokens": int(answer.sum()),
            "max_abs_diff": float(difference.max()), "mean_abs_diff": float(difference.mean()),
            "float32_logit_std": float(full.std()), "top1_agreement": float(agree.float().mean()),
            "top1_agreement_answer": float(agree[0, :-1][answer].float().mean()),
            "answer_loss_float32": loss(full), "answer_loss_bf16": loss(half)}


# ---- the training run ---------------------------------------------------------------------------------
def train_overrides(device: str, workdir: Path) -> list[str]:
    common = [f"data.data_dir={workdir / 'data'}", "data.source=synthetic", "logger=csv", "test=false", "export=false",
              "trainer.log_every_n_steps=1", f"hydra.run.dir={workdir / 'train_run'}"]
    if device == "cuda":  # the recipe (experiment=burberry_lora) on the random real-size model
        # 320 products, a fifth held out for validation and none for test: 64 val products, the recipe's
        # data.val_limit subset (scored whole, so no extra validation of the whole split follows), and
        # half the rendering of a 640-product catalogue with the usual fractions
        return ["experiment=burberry_lora", "model.spec.name_or_path=random:phi3v", "data.synthetic.num_products=320",
                "data.val_fraction=0.2", "data.test_fraction=0.0", "data.synthetic.image_size=1000",
                "trainer.max_steps=6", "trainer.val_check_interval=12", *common]
    # the tiny model, with the GPU run's structure: accumulated batches, a validation every n batches
    return ["hardware=cpu", "data.synthetic.num_products=40", "data.batch_size=2", "data.global_batch_size=4",
            "data.eval_batch_size=4", "data.num_workers=0", "evaluation.max_new_tokens=4", "trainer.max_steps=2",
            "trainer.val_check_interval=2", *common]


def train_figures(run_dir: Path, batch_size: int) -> dict:
    """Step and validation times of a finished run (its csv/metrics.csv) and the validation share of a
    real run at the recipe's cadence."""
    rows = list(csv.DictReader((run_dir / "csv" / "metrics.csv").open()))

    def column(name):
        return [float(row[name]) for row in rows if row.get(name) not in (None, "")]

    # samples/s is logged at the last batch of each optimizer step, over the time since the batch before
    steps = [batch_size / value for value in column("train/samples_per_s")]
    validations = column("val/seconds")
    figures = {"batch_s": steps, "validation_s": validations, "peak_memory_gib": max(column("train/peak_memory_gib"),
                                                                                     default=None)}
    if steps and validations:
        step, validation = statistics.median(steps), statistics.median(validations)
        between = TRAIN_PHOTOS / RECIPE_BATCH / VALIDATIONS_PER_EPOCH
        figures.update(median_batch_s=step, median_validation_s=validation, batches_between_validations=between,
                       validation_share=validation / (between * step + validation))
    return figures


# ---- the driver ---------------------------------------------------------------------------------------
def run_phase(phase: str, args, deadline: float, workdir: Path) -> dict:
    """Run one phase in a subprocess until `deadline`; its record (status, seconds, results)."""
    started = time.time()
    record = {"phase": phase, "status": "ok", "seconds": None}
    if phase in GROUPS:
        kernels, _ = GROUPS[phase]
        problem = kernels_problem(None if kernels == "none" else kernels)
        if problem:  # e.g. no CUDA: every cell says why, with the message a run gets
            record["status"] = f"skipped: {problem}"
            note = f"skipped: model.spec.kernels={kernels} cannot run here (see Phases)"
            record["cells"] = [{**asdict(cell), "note": note} for cell in plan(phase, args.device)]
            return record
        command = [sys.executable, __file__, "--worker", phase, "--device", args.device, "--deadline", str(deadline),
                   "--workdir", str(workdir)]
    elif phase == "kernels-test":
        if args.device != "cuda":
            record["status"] = "skipped: no CUDA device (tests/test_kernels.py's GPU tests need one)"
            return record
        command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_kernels.py"]
    else:
        command = [sys.executable, str(REPO / "train.py"), *train_overrides(args.device, workdir)]
    log = workdir / f"{slug(phase)}.log"
    with log.open("w") as handle:
        try:
            # 30 s past the deadline: a worker stops starting cells at it, then ends the one it runs
            completed = subprocess.run(command, cwd=REPO, stdout=handle, stderr=subprocess.STDOUT,
                                       timeout=max(deadline - time.time(), 1) + 30,
                                       env={**os.environ, "PYTHONUNBUFFERED": "1"})
            if completed.returncode:
                record["status"] = f"failed: exit {completed.returncode} (see the log's end below)"
        except subprocess.TimeoutExpired:
            record["status"] = "stopped at its time limit"
    record["seconds"] = time.time() - started
    tail = log.read_text(errors="replace").splitlines()
    record["log_tail"] = tail[-8:] if record["status"] != "ok" or phase == "kernels-test" else tail[-2:]
    if phase in GROUPS:
        path = workdir / f"cells_{slug(phase)}.json"
        result = json.loads(path.read_text()) if path.is_file() else {"cells": []}
        unrun = [{**asdict(cell), "note": f"skipped: phase {record['status']}"}
                 for cell in plan(phase, args.device)[len(result["cells"]):]]
        record.update(cells=result["cells"] + unrun, fidelity=result.get("fidelity"), built_s=result.get("built_s"),
                      warmup=result.get("warmup"), steps=result.get("steps"))
    elif phase == "train" and record["status"] == "ok":
        batch_size = 4 if args.device == "cuda" else 2
        record["figures"] = train_figures(workdir / "train_run", batch_size)
    return record


def verdicts(cells: list[dict], train: dict | None) -> list[str]:
    """The issue's targets, each with the cell or figures that decide it."""
    decisive = [c for c in cells if c["batch"] == max(c["batch"] for c in cells) and c.get("mfu") is not None]

    def best(limit):
        fitting = [c for c in decisive if (c["peak_reserved_gib"] or math.inf) <= limit]
        return max(fitting, key=lambda c: c["mfu"], default=None)

    lines = []
    for key, limit, label in (("mfu_80gb", FITS_80GB_GIB, "fits 80 GB"), ("mfu_24gb", FITS_24GB_GIB, "<= 24 GB")):
        cell = best(limit)
        if cell is None:
            lines.append(f"- MFU target {TARGETS[key]:.0%} ({label}): no measured cell")
            continue
        met = "met" if cell["mfu"] >= TARGETS[key] else "NOT met"
        compiled = " + compile" if cell["compiled"] else ""
        lines.append(f"- MFU target {TARGETS[key]:.0%} ({label}): {met}: {cell['mfu']:.1%} with checkpointing "
                     f"{cell['checkpointing']}, kernels {cell['kernels']}{compiled}, batch {cell['batch']} "
                     f"({cell['peak_reserved_gib']:.1f} GiB reserved, {cell['step_s']:.3f} s a step)")
    share = (train or {}).get("validation_share")
    if share is None:
        lines.append(f"- validation share target {TARGETS['validation_share']:.0%}: not measured")
    else:
        met = "met" if share <= TARGETS["validation_share"] else "NOT met"
        lines.append(f"- validation share target <= {TARGETS['validation_share']:.0%}: {met}: {share:.1%} (a "
                     f"validation {train['median_validation_s']:.1f} s per {train['batches_between_validations']:.0f} "
                     f"batches of {train['median_batch_s']:.3f} s)")
    return lines


def report(records: list[dict], header: str) -> str:
    cells = [gpu.Cell(**cell) for record in records for cell in record.get("cells", [])]
    train = next((r.get("figures") for r in records if r["phase"] == "train"), None)
    fidelity = next((r.get("fidelity") for r in records if r.get("fidelity")), None)
    lines = [f"# GPU check (issue 23): {header}", "", "## Phases", "", "| phase | status | seconds |", "|---|---|---|"]
    lines += [f"| {r['phase']} | {r['status']} | {'' if r['seconds'] is None else format(r['seconds'], '.0f')} |"
              for r in records]
    for record in records:
        if record.get("log_tail") and (record["status"] != "ok" or record["phase"] == "kernels-test"):
            lines += ["", f"{record['phase']} log (end):", "", "```", *record["log_tail"], "```"]
    lines += ["", "## Targets", "", *verdicts([asdict(c) for c in cells], train)]
    lines += ["", "## Cells", "", gpu.markdown(cells, "LoRA bf16 (the recipe's), MFU as benchmarks/gpu.py counts it")]
    if fidelity:
        values = [format(v, ".4g") if isinstance(v, float) else str(v) for v in fidelity.values()]
        lines += ["## bf16 fidelity (random weights: bf16 vs float32 logits, one sample)", "",
                  "| " + " | ".join(fidelity) + " |", "|" + "---|" * len(fidelity),
                  "| " + " | ".join(values) + " |", ""]
    if train:
        lines += ["## Short training run (train.py, the recipe's settings)", "",
                  f"- batch seconds (median of {len(train['batch_s'])}): {train.get('median_batch_s', math.nan):.3f}",
                  f"- validations (seconds): {', '.join(f'{v:.1f}' for v in train['validation_s'])}",
                  f"- validation share at the recipe's cadence: {train.get('validation_share', math.nan):.1%}",
                  f"- peak memory GiB: {train['peak_memory_gib']}", ""]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    parser.add_argument("--phases", default=",".join(PHASES), help=f"comma list of {', '.join(PHASE_SECONDS)}")
    parser.add_argument("--budget-s", type=float, default=None, help="whole check (GPU default 480, CPU 900)")
    parser.add_argument("--started", type=float, default=None, help="unix time the budget counts from (the .sh's)")
    parser.add_argument("--out", default=None, help="default: benchmarks/results on a GPU, a temporary dir on the CPU")
    parser.add_argument("--workdir", default=None, help="phase logs, cells and the training run (default: temporary)")
    parser.add_argument("--worker", default=None, choices=list(GROUPS), help=argparse.SUPPRESS)
    parser.add_argument("--deadline", type=float, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return cells_worker(args)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA device: run with --device cpu (the tiny model) or on a GPU machine")
    phases = args.phases.split(",")
    unknown = sorted(set(phases) - set(PHASE_SECONDS))
    if unknown:
        raise SystemExit(f"--phases: unknown {unknown}; choose from {', '.join(PHASE_SECONDS)}")
    started = args.started or time.time()
    budget = args.budget_s or (480.0 if args.device == "cuda" else 900.0)
    end = started + budget
    if args.out is None:  # a CPU run's figures say nothing about a GPU: never into benchmarks/results
        args.out = REPO / "benchmarks" / "results" if args.device == "cuda" else tempfile.mkdtemp(prefix="phi3v-gpu-")
    out = Path(args.out)
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="phi3v-gpu-check-work-"))
    out.mkdir(parents=True, exist_ok=True)
    workdir.mkdir(parents=True, exist_ok=True)
    name = torch.cuda.get_device_name() if args.device == "cuda" else platform.processor() or "cpu"
    header = (f"{name}, torch {torch.__version__}, {'random:phi3v bf16' if args.device == 'cuda' else 'tiny float32'}, "
              f"budget {budget:.0f} s")
    records = []
    for index, phase in enumerate(phases):
        # its own share, less whatever later phases still need; the last phase gets what is left
        later = sum(PHASE_SECONDS[p] for p in phases[index + 1:])
        deadline = end if index == len(phases) - 1 else min(time.time() + PHASE_SECONDS[phase], end - later)
        if args.device != "cuda":
            deadline = end  # no budget to share on the CPU: the tiny model's phases take seconds
        if deadline - time.time() < 20:
            records.append({"phase": phase, "status": "skipped: time budget", "seconds": None,
                            "cells": [{**asdict(c), "note": "skipped: time budget"} for c in plan(phase, args.device)]
                            if phase in GROUPS else []})
        else:
            print(f"[{time.time() - started:5.0f} s] {phase} (until {deadline - started:.0f} s)", flush=True)
            records.append(run_phase(phase, args, deadline, workdir))
        (out / "gpu_check.json").write_text(json.dumps({"header": header, "phases": records}, indent=1))
        (out / "gpu_check.md").write_text(report(records, header))
    print(report(records, header))
    print(f"tables: {out / 'gpu_check.md'}, {out / 'gpu_check.json'}; phase logs and runs: {workdir}")


if __name__ == "__main__":
    main()
