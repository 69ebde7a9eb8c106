"""Fused GPU kernels for the decoder (`model.spec.kernels`): null = PyTorch's, `liger` = Liger Kernel's.

Liger Kernel (`pip install -e .[gpu]`, Triton, CUDA only) replaces ops that PyTorch runs as several
small elementwise kernels, each a pass over the activations, by one fused kernel each:
- RMSNorm (twice per decoder layer and once at the end): `LigerRMSNorm` modules that share the
  native norms' weights, on this model only;
- SwiGLU (`silu(gate) * up` of Phi-3's fused gate_up_proj): `LigerPhi3SwiGLUMLP` modules holding the
  native projections (PEFT's LoRA wrappers included), on this model only;
- RoPE: Liger's rotary kernel in place of transformers' `apply_rotary_pos_emb`. That function is
  looked up in transformers' Phi-3 module for every Phi-3 attention in the process, so this one
  swap is process-wide (how Liger itself patches models); it runs Liger's kernel on CUDA tensors
  only, so a model kept on the CPU in the same process still runs PyTorch's;
- the lm_head + cross-entropy of a training loss (`linear_cross_entropy` below): the logits are
  computed and reduced chunk by chunk and never stored whole. Training already runs the lm_head on
  the answer window only (`logits_to_keep`), so this saves an estimated ~60 MB at batch 4 (~160
  positions x 32k logits in bf16 and float32 with their gradients), not gigabytes.

Liger's kernels compute in float32 internally like PyTorch's, so results agree within bf16
rounding (tests/test_kernels.py checks loss and LoRA gradients on a GPU). Attention stays SDPA's
(or flash-attn's). Swapping is done on the built model, before LoRA wraps its projections; the
weights and their names do not change, so adapters and checkpoints are the same either way.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from functools import cache

import torch
import torch.nn.functional as F
from torch import nn

from .model_spec import KERNELS  # model.spec.kernels: null (PyTorch's) or one of these
from .modeling import IGNORE_INDEX

INSTALL_HINT = "pip install -e .[gpu]  (or: pip install liger-kernel)"


class KernelsUnavailable(RuntimeError):
    """The fused kernels asked for cannot run here (no CUDA device, or the package is missing)."""


def kernels_problem(kernels: str | None) -> str | None:
    """Why `model.spec.kernels` cannot be used on this machine (None when it can). Cheap: imports
    nothing from Liger, so entry points call it before any work."""
    if kernels is None:
        return None
    if kernels not in KERNELS:
        return f"model.spec.kernels must be null or one of {', '.join(KERNELS)}, got {kernels!r}"
    if not torch.cuda.is_available():
        return (f"model.spec.kernels={kernels} runs Triton kernels, which need a CUDA GPU, and this machine has "
                "none: set model.spec.kernels=null (PyTorch's kernels, on any device)")
    if importlib.util.find_spec("liger_kernel") is None:
        return (f"model.spec.kernels={kernels} needs the liger-kernel package: {INSTALL_HINT}, or set "
                "model.spec.kernels=null")
    return None


def apply_kernels(model: nn.Module, kernels: str | None) -> None:
    """Swap the decoder's RMSNorm, SwiGLU and RoPE for `kernels`' and give the model its fused
    lm_head + cross-entropy (`model.linear_cross_entropy`). Raises KernelsUnavailable naming
    model.spec.kernels where they cannot run. A no-op for null."""
    problem = kernels_problem(kernels)
    if problem:
        raise KernelsUnavailable(problem)
    if kernels is None:
        return
    from liger_kernel.transformers import LigerPhi3SwiGLUMLP, LigerRMSNorm

    decoder = model.model
    decoder.norm = _liger_norm(LigerRMSNorm, decoder.norm)
    for layer in decoder.layers:
        layer.input_layernorm = _liger_norm(LigerRMSNorm, layer.input_layernorm)
        layer.post_attention_layernorm = _liger_norm(LigerRMSNorm, layer.post_attention_layernorm)
        with torch.device("meta"):  # the projections are the native ones: allocate nothing
            mlp = LigerPhi3SwiGLUMLP(model.config)
        mlp.gate_up_proj, mlp.down_proj = layer.mlp.gate_up_proj, layer.mlp.down_proj
        layer.mlp = mlp
    _swap_rope()
    model.linear_cross_entropy = linear_cross_entropy


def _liger_norm(liger_class: type, native: nn.Module) -> nn.Module:
    norm = liger_class(native.weight.shape[0], eps=native.variance_epsilon)  # Phi-3's: x / rms(x) * weight
    norm.weight = native.weight
    return norm


@cache
def _swap_rope() -> None:
    from liger_kernel.transformers.rope import liger_rotary_pos_emb
    from transformers.models.phi3 import modeling_phi3

    modeling_phi3.apply_rotary_pos_emb = cuda_only(liger_rotary_pos_emb, modeling_phi3.apply_rotary_pos_emb)


def cuda_only(fused: Callable, native: Callable) -> Callable:
    """transformers' `apply_rotary_pos_emb(q, k, cos, sin, unsqueeze_dim)` running `fused` on CUDA
    tensors and `native` on any other."""

    def rotary_pos_emb(q, k, cos, sin, unsqueeze_dim=1):
        rotary = fused if q.is_cuda else native
        return rotary(q, k, cos, sin, unsqueeze_dim=unsqueeze_dim)

    return rotary_pos_emb


def linear_cross_entropy(
    hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor, num_items_in_batch: int | None = None
) -> torch.Tensor:
    """Next-token cross-entropy of `lm_head(hidden)` against `labels` (same positions), summed over the
    supervised tokens and divided by `num_items_in_batch` (transformers' convention; None = their
    count, i.e. the mean), without storing the logits: Liger's fused linear cross-entropy over the
    supervised positions only (gathered first, as training.losses does with the logits)."""
    from liger_kernel.transformers.functional import liger_fused_linear_cross_entropy

    targets = labels[:, 1:]
    supervised = targets != IGNORE_INDEX
    count = int(supervised.sum())
    weight = weight.to(hidden.dtype) if weight.dtype != hidden.dtype else weight
    if count == 0:  # still a graph through the head and the decoder, so every weight gets a (zero) gradient
        total = F.linear(hidden[:, -1], weight).sum() * 0.0
    else:
        total = liger_fused_linear_cross_entropy(hidden[:, :-1][supervised], weight, targets[supervised],
                                                 reduction="sum")
    return total / ((count or 1) if num_items_in_batch is None else num_items_in_batch)
