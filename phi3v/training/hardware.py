"""What the hardware settings imply before a run starts: the training world, and which weight dtypes a
mixed precision accepts. (The accumulation behind a fixed global batch is the data spec's:
phi3v.data.spec.DataSpec.accumulation.)"""

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
