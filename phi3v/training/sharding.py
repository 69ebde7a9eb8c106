"""FSDP2 (`fully_shard`) for Phi-3-V with LoRA: what becomes a shard unit, and how to get whole
tensors back out of the shards (exports, metrics).

Every decoder layer and every CLIP encoder layer (the model's `_no_split_modules`) is one unit: its
weights are all-gathered just before it runs and freed after, so peak memory holds one layer's full
weights plus everyone's shards. The rest (embeddings, lm_head, projector, separators) is the root
unit. The root is the outermost module (the PEFT wrapper): PEFT calls the inner model's `.forward`
directly, which would skip the inner module's FSDP hooks.
"""

from __future__ import annotations

import torch
from torch import nn

from phi3v.modeling.model_spec import torch_dtype

from .lora import trainable_parameter_names
from .specs import ShardingSpec


def shard_units(model: nn.Module) -> list[nn.Module]:
    """The modules that become their own FSDP unit: instances of the model's `_no_split_modules`
    (the outer model's list: a PEFT wrapper forwards the attribute; inner models' lists, such as
    CLIP's, name finer pieces)."""
    names = set(getattr(model, "_no_split_modules", None) or [])
    units = [module for module in model.modules() if type(module).__name__ in names]
    if not units:
        raise ValueError(f"{type(model).__name__} declares no _no_split_modules: nothing to shard layer by layer")
    return units


def shard_model(model: nn.Module, mesh, spec: ShardingSpec) -> nn.Module:
    """Apply `fully_shard` in place: every layer unit, then the root; `generate` gathers the root too."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard, register_fsdp_forward_method

    policy = MixedPrecisionPolicy(
        param_dtype=torch_dtype(spec.param_dtype) if spec.param_dtype else None,
        reduce_dtype=torch_dtype(spec.reduce_dtype),
    )
    for unit in shard_units(model):
        fully_shard(unit, mesh=mesh, mp_policy=policy, reshard_after_forward=spec.reshard_after_forward)
    fully_shard(model, mesh=mesh, mp_policy=policy, reshard_after_forward=spec.reshard_after_forward)
    register_fsdp_forward_method(model, "generate")
    return model


def full_tensor(tensor: torch.Tensor) -> torch.Tensor:
    """The whole tensor of a DTensor shard (a collective: every rank must call it), else the tensor."""
    from torch.distributed.tensor import DTensor

    return tensor.full_tensor() if isinstance(tensor, DTensor) else tensor


def gathered_adapter_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """{name: whole CPU tensor} of what an export saves, on every rank (a collective under FSDP).

    For a PEFT model: the LoRA weights and the full copies of `modules_to_save` (frozen parts such
    as the unused last CLIP layer included: PEFT saves those copies whole); for a fully trained
    model, everything. The frozen base is never gathered: it would move the whole 4.2B-parameter
    model to every rank."""
    trainable = set(trainable_parameter_names(model))
    everything = not hasattr(model, "peft_config")
    return {
        name: full_tensor(value.detach()).cpu()
        for name, value in model.state_dict().items()
        if everything or name in trainable or "lora_" in name or "modules_to_save." in name
    }
