"""What a checkpointed layer keeps for backward (`model.spec.activation_checkpointing`).

Full checkpointing keeps only each layer's input and runs the whole layer forward again in backward:
every matrix product twice. Two cheaper choices, both PyTorch's or transformers' own mechanisms:
- `selective`: PyTorch's selective activation checkpointing (`torch.utils.checkpoint`'s
  `create_selective_checkpoint_contexts`) keeps the outputs of the layer's matrix products and of
  attention, and recomputes only what is cheap to redo: norms, RoPE, SiLU, casts, LoRA's dropout
  and scaling, additions. Backward then reruns no matrix product of the base model; the memory kept
  is what those outputs take (on Phi-3-V ~38k values per token and layer: qkv 9,216, attention
  3,072 + its log-sum-exp, o_proj 3,072, gate_up 16,384, down 3,072, the layer input 3,072; an
  estimate of ~23 GiB at 16 crops x batch 4 against the ~51 GiB of activations that no
  checkpointing keeps, by the 60.1 GiB measured on the H200).
- `offload`: full checkpointing whose kept layer inputs go to host memory (`torch.autograd.graph.
  save_on_cpu`, pinned where CUDA is): frees layers x tokens x hidden values of GPU memory (~2 GB
  at batch 4 x 2.5k tokens in bf16) for a copy each way on the compute stream (not overlapped:
  that would take our own stream handling in saved-tensor hooks). transformers has the same switch
  (`activation_checkpointing_enable(offload=True)`) but pins memory unconditionally, which fails on
  CPU-only PyTorch; `offloaded_checkpoint` below is its four lines with that fixed.

LoRA's B product (r -> out features, r <= 64) is recomputed, not kept: its output is as large as
the base product's and costs ~1% of its FLOPs to redo (r 32 vs 3,072 inputs).
"""

from __future__ import annotations

import functools

import torch
from torch.autograd.graph import save_on_cpu
from torch.utils.checkpoint import CheckpointPolicy, checkpoint, create_selective_checkpoint_contexts

from .model_spec import CHECKPOINTING  # the modes of model.spec.activation_checkpointing

# Matrix products whose inner dimension is at most this are recomputed (LoRA's B: rank -> out).
THIN_PRODUCT = 64

_aten = torch.ops.aten
_MATRIX_PRODUCTS = {_aten.mm.default, _aten.addmm.default, _aten.bmm.default, _aten.baddbmm.default}
# every attention kernel SDPA may pick (CUDA flash / memory-efficient / cuDNN, the CPU one, the math
# fallback's products are caught above)
_ATTENTION = {
    getattr(_aten, name).default
    for name in ("_scaled_dot_product_flash_attention", "_scaled_dot_product_efficient_attention",
                 "_scaled_dot_product_cudnn_attention", "_scaled_dot_product_flash_attention_for_cpu",
                 "_flash_attention_forward", "_efficient_attention_forward")
    if hasattr(_aten, name)
}


def keep_products(ctx, op, *args, **kwargs) -> CheckpointPolicy:
    """The selective policy: keep attention and matrix-product outputs, recompute everything else."""
    if op in _ATTENTION:
        return CheckpointPolicy.MUST_SAVE
    if op in _MATRIX_PRODUCTS:
        first = args[1] if op in (_aten.addmm.default, _aten.baddbmm.default) else args[0]
        thin = first.shape[-1] <= THIN_PRODUCT
        return CheckpointPolicy.PREFER_RECOMPUTE if thin else CheckpointPolicy.MUST_SAVE
    return CheckpointPolicy.PREFER_RECOMPUTE


def checkpoint_options(mode: bool | str) -> tuple[dict, bool]:
    """(activation_checkpointing_kwargs, offload) of transformers' `activation_checkpointing_enable`
    for a `model.spec.activation_checkpointing` value other than false."""
    if mode not in CHECKPOINTING or mode is False:
        raise ValueError(f"model.spec.activation_checkpointing: no checkpointing options for {mode!r}")
    kwargs = {"use_reentrant": False}  # non-reentrant: what selective checkpointing and offload need
    if mode == "selective":
        kwargs["context_fn"] = functools.partial(create_selective_checkpoint_contexts, keep_products)
    return kwargs, mode == "offload"


def offloaded_checkpoint(function, *args, **kwargs):
    """`torch.utils.checkpoint.checkpoint` whose saved layer inputs wait for backward in host memory."""
    with save_on_cpu(pin_memory=torch.cuda.is_available()):
        return checkpoint(function, *args, **kwargs)
