"""LoRA on Phi-3-V with PEFT: which modules adapt, which train fully, everything else frozen
(what to train: `LoraSpec`, phi3v/training/specs.py)."""

from __future__ import annotations

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from peft.tuners.tuners_utils import BaseTunerLayer
from peft.utils import ModulesToSaveWrapper
from torch import nn

from phi3v.modeling import Phi3VForCausalLM

from .specs import FULLY_TRAINABLE, PROJECTOR, LoraSpec

VISION_TARGETS = ("q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2")
# Parts of CLIP that never influence the features (they come from the second-to-last layer): kept
# frozen even when the tower trains whole, so every trainable weight gets a gradient (DDP-safe).
UNUSED_CLIP = ("post_layernorm",)


def target_pattern(spec: LoraSpec, clip_layers: int) -> str:
    """A regex over full module names: decoder targets, plus CLIP layers 0..L-2 when `vision`."""
    decoder = rf"model\.layers\.\d+\.(self_attn|mlp)\.({'|'.join(spec.targets)})"
    if not spec.vision:
        return decoder
    used = "|".join(str(i) for i in range(clip_layers - 1))  # the last layer does not feed the features
    vision = (
        rf"model\.vision_embed_tokens\.img_processor\.vision_model\.encoder\.layers\.({used})\."
        rf"(self_attn|mlp)\.({'|'.join(VISION_TARGETS)})"
    )
    return rf"^(?:{decoder}|{vision})$"


def apply_lora(model: Phi3VForCausalLM, spec: LoraSpec) -> PeftModel | Phi3VForCausalLM:
    """Wrap `model` for training as `spec` says; returns the PEFT model (or the model itself)."""
    if not spec.enabled:
        model.requires_grad_(True)
        return model
    names = [*spec.modules_to_save, *([PROJECTOR] if spec.train_projector else [])]
    modules_to_save = [FULLY_TRAINABLE[name] for name in dict.fromkeys(names)]
    config = LoraConfig(
        r=spec.r,
        lora_alpha=spec.alpha,
        lora_dropout=spec.dropout,
        target_modules=target_pattern(spec, model.config.vision_config.num_hidden_layers),
        modules_to_save=modules_to_save or None,
        bias="none",
        task_type="CAUSAL_LM",
    )
    compute_dtype = model.dtype  # before wrapping: the base weights' dtype
    peft_model = get_peft_model(model, config)
    _freeze_unused_clip(peft_model, model.config.vision_config.num_hidden_layers)
    keep_trainables_in_float32(peft_model, compute_dtype)
    return peft_model


def cast_lora_inputs(model: nn.Module, cast: bool) -> None:
    """Whether LoRA layers copy their input to the adapter's dtype first (PEFT's default: True).

    The adapters are float32 (`keep_trainables_in_float32`, and PEFT's own default beside a half
    base), so PEFT turns each adapted layer's bf16 input into a float32 copy before the adapter.
    Under autocast (`hardware.precision=bf16-mixed`) the adapter's matrix product casts it straight
    back to bf16: two passes over every adapted input for bit-identical results (the adapter sees
    the same bf16 values either way, and the same tensor is kept for backward). False skips them;
    only correct under autocast: without it a bf16 input meets float32 weights. The switch is
    PEFT's (`cast_input_dtype_enabled`, as `peft.helpers.disable_input_dtype_casting` sets it)."""
    for module in model.modules():
        if isinstance(module, BaseTunerLayer):
            module.cast_input_dtype_enabled = cast


HALF = (torch.bfloat16, torch.float16)


def keep_trainables_in_float32(model: PeftModel, compute_dtype: torch.dtype) -> None:
    """Hold every trainable weight in float32 while the frozen base stays in `compute_dtype`.

    A bf16 weight cannot take an update smaller than ~1/256 of itself: late in a schedule most
    updates of a pure-bf16 projector would round away. float32 trainables keep them, for the cost
    of 2 extra bytes per trainable weight (~0.15 GB for Phi-3-V's 72M), and the optimizer states
    follow their dtype.

    LoRA layers cast their input to the adapter's dtype and their sum back to the base output's
    (PEFT does it). Modules trained whole (`modules_to_save`: projector, lm_head, embed_tokens,
    vision tower) are cast at their boundary: inputs to their weights' dtype, the output back to
    `compute_dtype`, so the rest of the model sees the dtype it always did. Frozen parts of those
    copies (CLIP's unused last layer) stay in the base dtype. A float32 base (or a quantized one
    whose compute dtype is float32) needs nothing. Idempotent.
    """
    if compute_dtype not in HALF:
        return
    for parameter in model.parameters():
        if parameter.requires_grad and parameter.dtype in HALF:
            parameter.data = parameter.data.float()
    for wrapper in model.modules():
        if isinstance(wrapper, ModulesToSaveWrapper):
            for trained in wrapper.modules_to_save.values():
                _cast_at_boundary(trained, compute_dtype)


def _cast_at_boundary(module: nn.Module, compute_dtype: torch.dtype) -> None:
    if getattr(module, "_phi3v_boundary_cast", None) == compute_dtype:
        return

    def cast_inputs(module, args, kwargs):
        # Read at call time (FSDP may gather weights in hardware.fsdp.param_dtype), from a trained
        # weight: a trained CLIP copy also holds its frozen, never-run last layer in the base dtype.
        dtype = next((p.dtype for p in module.parameters() if p.requires_grad), compute_dtype)
        return tuple(_cast(a, dtype) for a in args), {k: _cast(v, dtype) for k, v in kwargs.items()}

    module.register_forward_pre_hook(cast_inputs, with_kwargs=True)
    module.register_forward_hook(lambda module, args, output: _cast(output, compute_dtype))
    module._phi3v_boundary_cast = compute_dtype


def _cast(value, dtype: torch.dtype):
    if isinstance(value, torch.Tensor) and value.is_floating_point() and value.dtype != dtype:
        return value.to(dtype)
    return value


def _freeze_unused_clip(model: PeftModel, clip_layers: int) -> None:
    last_layer = f".encoder.layers.{clip_layers - 1}."
    for name, parameter in model.named_parameters():
        if "img_processor" in name and (last_layer in name or any(part in name for part in UNUSED_CLIP)):
            parameter.requires_grad_(False)


def trainable_parameter_names(model) -> list[str]:
    return [name for name, parameter in model.named_parameters() if parameter.requires_grad]
