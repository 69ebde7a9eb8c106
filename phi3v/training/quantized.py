"""Which runs a quantized (QLoRA) base supports, checked before any work.

A quantized base trains LoRA adapters (float32) beside frozen nf4/int8 decoder weights, on one
device or with DDP (every rank holds the whole quantized model: 4.2B Phi-3-V is ~2.9 GB in nf4).
FSDP2 cannot shard bitsandbytes' packed weights, and the quantized weights themselves cannot train.

PEFT's `prepare_model_for_kbit_training` is deliberately not used. It upcasts every unquantized
weight to float32 (CLIP, projector, embeddings, lm_head: 0.52B weights, +1 GB on Phi-3-V), while
here `model.spec.dtype` decides their dtype as for any run. It turns activation checkpointing on
unconditionally (here a choice: `model.spec.activation_checkpointing`) and makes the embeddings'
outputs require gradients, which only reentrant checkpointing needs; transformers 5 checkpoints
non-reentrant (tested equal gradients in tests/test_quantization.py). The LoRA weights PEFT puts
beside bitsandbytes layers are float32 already.
"""

from __future__ import annotations

from phi3v.modeling.quantization import QuantizationUnavailable, require_bitsandbytes


def quantized_run_problems(quantization: str | None, strategy: str, lora_enabled: bool) -> list[str]:
    """Every reason a run with `model.spec.quantization` cannot start (empty when it can)."""
    if quantization is None:
        return []
    problems = []
    if strategy == "fsdp":
        problems.append(
            f"hardware.strategy=fsdp cannot shard a quantized base (model.spec.quantization={quantization}): FSDP "
            "cannot split bitsandbytes' packed weights. Use hardware=ddp (the quantized model fits each GPU whole), "
            "or model.spec.quantization=null to shard the unquantized model with hardware=fsdp"
        )
    if not lora_enabled:
        problems.append(
            f"model.lora.enabled=false trains every weight, but the quantized decoder weights "
            f"(model.spec.quantization={quantization}) cannot be trained: set model.lora.enabled=true or "
            "model.spec.quantization=null"
        )
    try:
        require_bitsandbytes(quantization)
    except QuantizationUnavailable as problem:
        problems.append(str(problem))
    return problems


def check_quantized_run(quantization: str | None, strategy: str, lora_enabled: bool) -> None:
    """Raise ValueError with every problem of `quantized_run_problems`, one per line."""
    problems = quantized_run_problems(quantization, strategy, lora_enabled)
    if problems:
        raise ValueError("\n".join(problems))
