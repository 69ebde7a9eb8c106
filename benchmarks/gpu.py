"""Training-step speed and memory of the real recipe on the real-size random model.

Run on a GPU box: `python benchmarks/gpu.py` (random:phi3v in bf16, the grid below), or here on the
CPU so it cannot rot: `python benchmarks/gpu.py --device cpu` (the tiny model in float32, a small grid).

The grid is {LoRA bf16, QLoRA nf4} x {num_crops 4, 16} x {batch 1, 4} x {activation checkpointing off,
on} x {sdpa, flash_attention_2 when the package imports}. `--checkpointing off,on,selective,offload,2`
also runs the other `model.spec.activation_checkpointing` modes and checkpointing of every 2nd decoder
layer (`model.spec.activation_checkpointing_every=2`: half the recomputation for about half the memory
saved); `--kernels liger` swaps in Liger's fused kernels (`model.spec.kernels=liger`, CUDA only: on
the CPU every cell is skipped with the reason); `--lora recipe,peft-cast,dropout-0` compares LoRA's
own costs (see LORA_VARIANTS); `--compile` compiles each decoder and CLIP layer with torch.compile
(regional compilation: one graph per layer type, so the compile time does not grow with depth), timed
after the warm-up steps that compile. Each cell trains the recipe's LoRA (conf/model/phi3v.yaml: r 32
on the decoder projections + the projector) with AdamW under bf16 autocast, as
`hardware.precision=bf16-mixed` does (LoRA without PEFT's float32 copy of its input, as training
runs it), on square 1000x1000 photos with a ~30-token answer (no padding), takes the loss as training
does (the model's summed loss over the answer window), and reports the median over the timed steps
after the warm-up. A cell that fails (out of memory, a combination that does not compile) is recorded
with the reason; `--deadline` skips the cells that would start after it.

Model FLOPs per training step (MFU's numerator; recomputation under checkpointing is not counted):
- decoder, per token: 2N forward + 2N backward to the inputs (the frozen base needs no weight
  gradients), N = the decoder's linear weights (3.72B); the lm_head (0.10B) likewise, but only at the
  positions whose logits the loss needs (`logits_to_keep`, as training runs it: the answer, ~30 of
  ~2,500 per row); attention 4·L·s·d forward and
  8·L·s·d backward per token (s = the row's length, L = 32 layers, d = 3072: causal masking halves
  the real work, the convention counts it whole);
- CLIP tower, frozen: forward only, 2·N_clip + 4·L_clip·577·1024 per CLIP token (577 per crop and
  global view, N_clip = 0.30B, L_clip = 23 layers that feed the features);
- projector (trained): 6·N_proj per image token.
MFU = FLOPs / step time / the GPU's dense bf16 peak (989 TFLOP/s for H100 SXM and H200; `--peak-tflops`).

Only torch, transformers, peft and phi3v.modeling / phi3v.training.lora / losses are imported: GPU
boxes without hydra, omegaconf, wandb or datasets run it. Writes `gpu.md` and `gpu.json` to `--out`
(default: benchmarks/results/ on a GPU, a new temporary directory on the CPU, printed at the end).
`benchmarks/gpu_check.sh` runs the cells that decide the GPU recipe, with a training run, in 8 minutes.
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import json
import platform
import resource
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import yaml
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from peft.tuners.lora import LoraLayer  # noqa: E402
from torch import nn  # noqa: E402

from phi3v.modeling.checkpointing import checkpoint_options  # noqa: E402
from phi3v.modeling.kernels import KernelsUnavailable, apply_kernels  # noqa: E402
from phi3v.modeling.masking import training_attention_mask  # noqa: E402
from phi3v.modeling.model_spec import ModelSpec, load_processor  # noqa: E402
from phi3v.modeling.random_weights import build_random_model  # noqa: E402
from phi3v.task import TaskSpec  # noqa: E402
from phi3v.training.lora import LoraSpec, apply_lora, cast_lora_inputs  # noqa: E402
from phi3v.training.losses import logits_window, supervised_tokens  # noqa: E402

PEAK_TFLOPS = {"H100": 989.4, "H200": 989.4, "A100": 312.0, "L40S": 362.0, "A10G": 125.0}
ANSWER = "Product: Vintage Check Cashmere Scarf, Category: Scarves, Full Price: 490.00"
CLIP_TOKENS_PER_VIEW = 577  # (336 / 14)^2 patches + the class token
# LoRA variants: (dropout, PEFT's float32 copy of each adapted input). `recipe` is what training runs
# under bf16 autocast (phi3v.training.lora.cast_lora_inputs); `peft-cast` is PEFT's default, what
# training ran before; `dropout-0` drops the recipe's dropout pass and its mask (PEFT: an identity).
LORA_VARIANTS = {"recipe": (None, False), "peft-cast": (None, True), "dropout-0": (0.0, False)}


@dataclass
class Cell:
    method: str
    num_crops: int
    batch: int
    checkpointing: str  # off, on (every layer), every <n> (every n-th decoder layer), selective, offload
    attention: str
    kernels: str = "none"  # none (PyTorch's) or liger
    compiled: bool = False
    lora: str = "recipe"  # a key of LORA_VARIANTS
    tokens_per_sample: int = 0
    step_s: float | None = None
    samples_per_s: float | None = None
    tokens_per_s: float | None = None
    tflops: float | None = None
    mfu: float | None = None
    peak_allocated_gib: float | None = None
    peak_reserved_gib: float | None = None
    note: str = ""


def recipe_lora() -> LoraSpec:
    """The LoRA settings of conf/model/phi3v.yaml, read from the file (no Hydra needed)."""
    values = yaml.safe_load((REPO / "conf" / "model" / "phi3v.yaml").read_text())["lora"]
    values.pop("_target_", None)
    return LoraSpec(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})


def build(method: str, preset: str, dtype: torch.dtype, device: torch.device, kernels: str = "none"):
    """The base (random weights, built on the device, `kernels` swapped in) wrapped with the recipe's
    LoRA. Raises KernelsUnavailable where the kernels cannot run."""
    quantization = "nf4" if method == "qlora" else None  # each decoder layer quantized as it is built
    base = build_random_model(preset, seed=0, dtype=dtype, device=device, quantization=quantization)
    apply_kernels(base, None if kernels == "none" else kernels)
    return apply_lora(base, recipe_lora())


def set_lora_variant(model, variant: str) -> None:
    """Dropout and input copy of every LoRA layer as LORA_VARIANTS[variant] says."""
    dropout, cast = LORA_VARIANTS[variant]
    dropout = recipe_lora().dropout if dropout is None else dropout
    for layer in model.modules():
        if isinstance(layer, LoraLayer):
            for name, current in layer.lora_dropout.items():
                if getattr(current, "p", 0.0) != dropout:  # replaced only when it changes: compiled layers keep
                    layer.lora_dropout[name] = nn.Dropout(dropout) if dropout > 0 else nn.Identity()  # PEFT's choice
    cast_lora_inputs(model, cast)


def method_available(method: str) -> str:
    """Why a method cannot run here ('' when it can)."""
    if method == "qlora":
        if importlib.util.find_spec("bitsandbytes") is None:
            return "bitsandbytes not installed (pip install -e .[qlora])"
        if importlib.util.find_spec("phi3v.modeling.quantization") is None:
            return "phi3v.modeling.quantization missing"
    return ""


def attention_available(name: str) -> bool:
    return name != "flash_attention_2" or importlib.util.find_spec("flash_attn") is not None


def make_batch(processor, batch: int, device: torch.device) -> dict:
    task = TaskSpec()
    photo = Image.effect_noise((1000, 1000), 64).convert("RGB")  # texture, so no crop is blank
    encoded = processor([task.prompt()] * batch, [photo] * batch, answers=[ANSWER] * batch)
    return {k: v.to(device, non_blocking=True) for k, v in encoded.items()}


def step_flops(model, batch: dict, logit_positions: int) -> float:
    """Model FLOPs of one training step whose lm_head runs on `logit_positions` per row (see the
    module docstring)."""
    config = model.config
    decoder = config.num_hidden_layers * (
        config.hidden_size * (config.hidden_size + 2 * config.num_key_value_heads * config.hidden_size
                              // config.num_attention_heads)
        + config.hidden_size * config.hidden_size
        + 3 * config.hidden_size * config.intermediate_size
    )
    lengths = batch["attention_mask"].sum(dim=1).tolist()
    flops = 0.0
    for s in lengths:
        attention = 12 * config.num_hidden_layers * s * config.hidden_size
        flops += s * (4 * decoder + attention) + logit_positions * 4 * config.hidden_size * config.vocab_size
    vision = config.vision_config
    clip_layers = vision.num_hidden_layers - 1  # features come from the second-to-last layer
    clip_params = clip_layers * (4 * vision.hidden_size**2 + 2 * vision.hidden_size * vision.intermediate_size)
    views = sum(int(h) // 336 * (int(w) // 336) + 1 for h, w in batch["image_sizes"].tolist())
    clip_per_token = 2 * clip_params + 4 * clip_layers * CLIP_TOKENS_PER_VIEW * vision.hidden_size
    flops += views * CLIP_TOKENS_PER_VIEW * clip_per_token
    projector = sum(p.numel() for n, p in model.named_parameters() if "img_projection" in n and "lora" not in n)
    image_tokens = int((batch["input_ids"] < 0).sum())
    flops += 6 * projector * image_tokens
    return flops


def set_checkpointing(model, label: str) -> None:
    """Checkpointing as a cell's label says (`checkpointing_label`), as model.spec would set it."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    if label == "off":
        base.activation_checkpointing_disable()
        return
    mode = label if label in ("selective", "offload") else True
    every = int(label.removeprefix("every ")) if label.startswith("every ") else 1
    options, offload = checkpoint_options(mode)
    base.activation_checkpointing_enable(options, every_n_layers=every, offload=offload)


def checkpointing_label(choice: str) -> str:
    """`off`, `on` (every layer), `selective`, `offload`; `n` or `every<n>` -> `every n` (`1` = `on`)."""
    choice = choice.strip().lower()
    if choice in ("off", "on", "selective", "offload"):
        return choice
    every = int(choice.removeprefix("every"))
    if every < 1:
        raise ValueError(f"--checkpointing: {choice!r} is not off, on, selective, offload or a layer interval >= 1")
    return "on" if every == 1 else f"every {every}"


def compile_layers(model, backend: str) -> None:
    """torch.compile each decoder and CLIP layer in place (regional compilation)."""
    base = model.get_base_model()
    for layer in [*base.model.layers, *base.vision_layers()]:
        layer.compile(backend=backend)


def run_cell(model, processor, cell: Cell, device: torch.device, warmup: int, steps: int, peak: float | None) -> None:
    base = model.get_base_model()
    base.set_attn_implementation(cell.attention)
    set_checkpointing(model, cell.checkpointing)
    set_lora_variant(model, cell.lora)
    batch = make_batch(processor, cell.batch, device)
    cell.tokens_per_sample = int(batch["attention_mask"][0].sum())
    labels = batch.pop("labels")
    # as the training step builds them (module.teacher_forced): no dense mask when padding only trails
    inputs = {**batch, "attention_mask": training_attention_mask(batch["attention_mask"], labels)}
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    model.train()
    times = []
    window = logits_window(labels)
    tokens = supervised_tokens(labels)
    for i in range(warmup + steps):
        start = time.perf_counter()
        with autocast:  # as the training step: the model's summed loss over the answer window
            output = model(**inputs, labels=labels, use_cache=False, logits_to_keep=window, num_items_in_batch=1)
            loss = output.loss / tokens
        del output
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if i >= warmup:
            times.append(time.perf_counter() - start)
        if not torch.isfinite(loss):
            cell.note = f"non-finite loss at step {i}"
    cell.step_s = statistics.median(times)
    cell.samples_per_s = cell.batch / cell.step_s
    cell.tokens_per_s = cell.batch * cell.tokens_per_sample / cell.step_s
    flops = step_flops(base, batch, window)
    cell.tflops = flops / cell.step_s / 1e12
    cell.mfu = cell.tflops / peak if peak else None
    if device.type == "cuda":
        cell.peak_allocated_gib = torch.cuda.max_memory_allocated(device) / 2**30
        cell.peak_reserved_gib = torch.cuda.max_memory_reserved(device) / 2**30
    else:
        cell.peak_allocated_gib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # process RSS
    del optimizer


def markdown(cells: list[Cell], header: str) -> str:
    lines = [header, "", "| method | crops | batch | ckpt | attention | kernels | LoRA | tokens/sample | step s "
             "| samples/s | tokens/s | TFLOP/s | MFU | peak alloc GiB | peak reserved GiB | note |", "|" + "---|" * 16]
    for c in cells:
        def f(value, fmt):
            return "" if value is None else format(value, fmt)
        attention = c.attention + (" +compile" if c.compiled else "")
        lines.append(f"| {c.method} | {c.num_crops} | {c.batch} | {c.checkpointing} | {attention} | {c.kernels} "
                     f"| {c.lora} | {c.tokens_per_sample} | {f(c.step_s, '.3f')} | {f(c.samples_per_s, '.2f')} "
                     f"| {f(c.tokens_per_s, ',.0f')} | {f(c.tflops, '.1f')} | {f(c.mfu, '.1%')} "
                     f"| {f(c.peak_allocated_gib, '.1f')} | {f(c.peak_reserved_gib, '.1f')} | {c.note} |")
    return "\n".join(lines) + "\n"


def run_cells(model, preset: str, cells: list[Cell], device: torch.device, warmup: int, steps: int,
              peak: float | None, deadline: float | None = None, done=lambda cell: None) -> None:
    """Run each cell on `model` (its note says why when it could not run); `done(cell)` after each."""
    for cell in cells:
        if deadline is not None and time.time() > deadline:
            cell.note = "skipped: time budget"
        elif not attention_available(cell.attention):
            cell.note = "skipped: flash-attn not installed"
        else:
            processor = load_processor(ModelSpec(name_or_path=preset, num_crops=cell.num_crops))
            try:
                run_cell(model, processor, cell, device, warmup, steps, peak)
            except torch.OutOfMemoryError:
                cell.note = "out of memory"
            except Exception as error:  # a combination that does not run (compile, kernels): recorded, not fatal
                cell.note = f"failed: {type(error).__name__}: {str(error).strip().splitlines()[0][:160]}"
            if device.type == "cuda":
                model.zero_grad(set_to_none=True)
                gc.collect()
                torch.cuda.empty_cache()
        done(cell)


def settings(device: str, preset: str | None, warmup: int | None, steps: int | None, peak_tflops: float | None):
    """(torch device, preset, dtype, warm-up, steps, device name, peak TFLOP/s) of a run on `device`."""
    gpu = device == "cuda"
    if gpu and not torch.cuda.is_available():
        raise SystemExit("no CUDA device: run with --device cpu (the tiny model) or on a GPU machine")
    name = torch.cuda.get_device_name() if gpu else platform.processor() or "cpu"
    peak = (peak_tflops or next((v for k, v in PEAK_TFLOPS.items() if k in name), None)) if gpu else None
    return (torch.device(device), preset or ("random:phi3v" if gpu else "tiny"),
            torch.bfloat16 if gpu else torch.float32,  # bf16 matmuls on CPU fall back to a naive kernel
            warmup if warmup is not None else (2 if gpu else 1), steps if steps is not None else (5 if gpu else 2),
            name, peak)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    parser.add_argument("--preset", default=None, help="random:phi3v (GPU default), random:phi35v, tiny (CPU default)")
    parser.add_argument("--methods", default="lora,qlora")
    parser.add_argument("--crops", default=None, help="comma list; GPU default 4,16, CPU default 1")
    parser.add_argument("--batches", default=None, help="comma list; GPU default 1,4, CPU default 1,2")
    parser.add_argument("--checkpointing", default="off,on",
                        help="comma list of off, on, selective, offload, n (every n-th layer)")
    parser.add_argument("--kernels", default="none", choices=["none", "liger"], help="model.spec.kernels")
    parser.add_argument("--lora", default="recipe", help=f"comma list of {', '.join(LORA_VARIANTS)}")
    parser.add_argument("--compile", action="store_true", help="torch.compile each layer (see the docstring)")
    parser.add_argument("--compile-backend", default="inductor", help="torch.compile backend (tests: eager)")
    parser.add_argument("--attention", default="sdpa,flash_attention_2")
    parser.add_argument("--warmup", type=int, default=None)
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--peak-tflops", type=float, default=None, help="dense bf16 peak of the GPU")
    parser.add_argument("--deadline", type=float, default=None, help="unix time after which cells are skipped")
    parser.add_argument("--out", default=None, help="default: benchmarks/results on a GPU, a temporary dir on the CPU")
    args = parser.parse_args()
    modes = [checkpointing_label(c) for c in args.checkpointing.split(",")]
    variants = args.lora.split(",")
    unknown = sorted(set(variants) - set(LORA_VARIANTS))
    if unknown:
        raise SystemExit(f"--lora: unknown {unknown}; choose from {', '.join(LORA_VARIANTS)}")
    device, preset, dtype, warmup, steps, name, peak = settings(
        args.device, args.preset, args.warmup, args.steps, args.peak_tflops)
    crops = [int(c) for c in (args.crops or ("4,16" if device.type == "cuda" else "1")).split(",")]
    batches = [int(b) for b in (args.batches or ("1,4" if device.type == "cuda" else "1,2")).split(",")]
    if args.out is None:  # a CPU run's figures say nothing about a GPU: never into benchmarks/results
        args.out = REPO / "benchmarks" / "results" if device.type == "cuda" else tempfile.mkdtemp(prefix="phi3v-gpu-")
    out = Path(args.out)
    header = (f"{preset} on {name} (torch {torch.__version__}, peak {peak} TFLOP/s bf16), "
              f"warm-up {warmup}, median of {steps} steps")
    cells: list[Cell] = []

    def done(cell: Cell) -> None:
        cells.append(cell)
        print(markdown([cell], "").splitlines()[-1], flush=True)
        write(out, cells, header)  # after every cell: a run cut short still leaves its table

    for method in args.methods.split(","):
        grid = [Cell(method, c, b, ck, a, kernels=args.kernels, compiled=args.compile, lora=v)
                for c in crops for b in batches for ck in modes for a in args.attention.split(",") for v in variants]
        reason = method_available(method)
        model = None
        if not reason:
            start = time.perf_counter()
            try:
                model = build(method, preset, dtype, device, args.kernels)
            except KernelsUnavailable as error:
                reason = str(error)
            else:
                print(f"{method}: built {preset} in {time.perf_counter() - start:.1f} s", flush=True)
        if reason:
            for cell in grid:
                cell.note = f"skipped: {reason}"
                done(cell)
            continue
        if args.compile:
            compile_layers(model, args.compile_backend)
        run_cells(model, preset, grid, device, warmup, steps, peak, args.deadline, done)
        del model
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()

    write(out, cells, header)
    print(markdown(cells, header))
    print(f"tables: {out / 'gpu.md'}, {out / 'gpu.json'}")


def write(out: Path, cells: list[Cell], header: str) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu.md").write_text(markdown(cells, header))
    (out / "gpu.json").write_text(json.dumps({"header": header, "cells": [asdict(c) for c in cells]}, indent=1))


if __name__ == "__main__":
    main()
