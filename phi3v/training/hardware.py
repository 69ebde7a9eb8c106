"""What the hardware settings imply before a run starts: the training world, the gradient
accumulation behind a fixed global batch, and which weight dtypes a mixed precision accepts."""

from __future__ import annotations

import torch

from .launch import external_cluster

PRECISION_ALIASES = {"16": "16-mixed", "bf16": "bf16-mixed"}  # Lightning's older spellings


def half_dtype(precision: str | int) -> str | None:
    """The 16-bit type a Lightning precision computes in: bfloat16 for bf16-mixed/bf16-true, float16
    for 16-mixed/16-true, None for 32/64-bit precisions."""
    name = str(precision)
    return "bfloat16" if name.startswith("bf16") else "float16" if name.startswith("16") else None


def check_precision(precision: str | int, dtype: str) -> None:
    """Fail, saying what to set, when a mixed `hardware.precision` and `model.spec.dtype` disagree.

    Mixed precisions compute in one 16-bit type; weights stored in the other one would be converted in
    every op (bf16 -> fp16 overflows above 65,504; fp16 -> bf16 drops 3 mantissa bits), and 16-mixed's
    loss scaling (GradScaler) is meant for fp16 or fp32 weights."""
    name = PRECISION_ALIASES.get(str(precision), str(precision))
    if not name.endswith("-mixed"):
        return
    allowed = (half_dtype(name), "float32")
    if dtype in allowed:
        return
    other = "bf16-mixed (GPUs with bfloat16: Ampere and newer)" if name == "16-mixed" else "16-mixed"
    raise ValueError(
        f"hardware.precision={precision} computes in {allowed[0]} but model.spec.dtype={dtype}: set "
        f"model.spec.dtype={allowed[0]} (frozen weights in half the memory) or model.spec.dtype=float32, "
        f"or use hardware.precision={other} to keep {dtype} weights"
    )


def world_size(accelerator: str, devices: int | str | list, num_nodes: int) -> int:
    """Training processes: those of a torchrun/srun launch, else devices x num_nodes, where devices
    "auto" (or -1) counts the visible GPUs of a GPU run and 1 on CPU, as Lightning does."""
    external = external_cluster()
    if external is not None:
        return external.world_size()
    if isinstance(devices, list | tuple):
        count = len(devices)
    elif str(devices) in ("auto", "-1"):
        gpu = accelerator in ("gpu", "cuda", "auto") and torch.cuda.is_available()
        count = torch.cuda.device_count() if gpu else 1
    elif isinstance(devices, str) and "," in devices:  # GPU ids: "0,1"
        count = len([d for d in devices.split(",") if d.strip()])
    else:
        count = int(devices)
    return count * num_nodes


def accumulation(global_batch_size: int | None, batch_size: int, world: int, num_nodes: int, configured: int) -> int:
    """Batches accumulated per optimizer step: `configured` (hardware.accumulate_grad_batches), or with
    data.global_batch_size set, global / (batch_size x world), so a recipe trains the same on 1 and 8 GPUs."""
    if global_batch_size is None:
        return configured
    per_step = batch_size * world
    if global_batch_size < 1 or global_batch_size % per_step:
        fits = [b for b in range(batch_size, 0, -1) if global_batch_size % (b * world) == 0]
        fix = f"set data.batch_size={fits[0]}" if fits and global_batch_size >= 1 else (
            f"set data.global_batch_size to a multiple of {world} (devices x nodes)")
        raise ValueError(
            f"data.global_batch_size={global_batch_size} is not a multiple of data.batch_size x devices x "
            f"hardware.num_nodes = {batch_size} x {world // num_nodes} x {num_nodes} = {per_step}: {fix} "
            "(or data.global_batch_size=null to use hardware.accumulate_grad_batches)"
        )
    derived = global_batch_size // per_step
    if configured not in (1, derived):
        raise ValueError(
            f"hardware.accumulate_grad_batches={configured} contradicts data.global_batch_size={global_batch_size} "
            f"(which gives {derived} at data.batch_size={batch_size} on {world} devices): set only one of them"
        )
    return derived
