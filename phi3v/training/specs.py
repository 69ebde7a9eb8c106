"""The settings of a training run's parts, as frozen dataclasses: what LoRA trains, how evaluation
generates, how the run uses its hardware (devices, precision, DDP and FSDP settings).

Each class is at once what its part takes (`apply_lora(model, LoraSpec)`, `shard_model(..., ShardingSpec)`)
and the schema of its node in conf/ (`model.lora`, `evaluation`, `hardware`, `hardware.ddp`, `hardware.fsdp`:
phi3v/config_schema.py registers the classes themselves), so a key is added by adding a field here, and
its type and default are stated once. This module imports no torch: composing a config answers a typo
in about a second. Choices checked at composition (`STRATEGIES`) live here too.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from phi3v.modeling.model_spec import DTYPES

STRATEGIES = ("auto", "ddp", "fsdp")  # phi3v.training.strategies.build_strategy
# The decoder's fused projections (attention qkv/o and MLP gate_up/down), as named in the checkpoints.
DECODER_TARGETS = ("qkv_proj", "o_proj", "gate_up_proj", "down_proj")
PROJECTOR = "img_projection"

# Modules that can be trained whole, by their full names: PEFT matches `modules_to_save` by name
# suffix, and a bare "embed_tokens" would also catch `vision_embed_tokens` (the whole vision tower).
FULLY_TRAINABLE = {
    "lm_head": "lm_head",
    "embed_tokens": "model.embed_tokens",
    PROJECTOR: "model.vision_embed_tokens.img_projection",
    "vision_tower": "model.vision_embed_tokens.img_processor",  # the whole CLIP (random tiny models)
}


@dataclass(frozen=True)
class LoraSpec:
    """What is trained.

    Args:
        r: LoRA rank; 16-64 is what Phi-3-V fine-tunes use (higher = more capacity and memory).
        alpha: LoRA scaling numerator (the update is scaled by alpha / r).
        dropout: dropout on the LoRA input. 0 costs nothing (PEFT puts an identity there); above 0
            each adapted layer runs one more pass over its input and keeps a 1-byte mask per input
            value for backward (17,408 values per token and decoder layer on Phi-3-V: ~5.7 GB at
            batch 4 x 2.5k tokens without checkpointing).
        targets: decoder module names to adapt.
        vision: also adapt the CLIP tower (attention + MLP of every layer that feeds the features;
            the last CLIP layer never does, so it gets no adapter and no unused-parameter errors).
        train_projector: train the image projection MLP fully (saved with the adapter).
        modules_to_save: other modules trained fully and saved with the adapter: lm_head,
            embed_tokens, vision_tower (useful for a randomly initialised model), img_projection.
        enabled: False trains every parameter instead (only sensible for tiny models).
    """

    r: int = 16
    alpha: int = 32
    dropout: float = 0.05
    targets: tuple[str, ...] = DECODER_TARGETS
    vision: bool = False
    train_projector: bool = False
    modules_to_save: tuple[str, ...] = field(default_factory=tuple)
    enabled: bool = True

    def __post_init__(self) -> None:
        problems = []
        if self.r < 1:
            problems.append(f"model.lora.r must be >= 1, got {self.r}")
        if not 0 <= self.dropout < 1:
            problems.append(f"model.lora.dropout must be in [0, 1), got {self.dropout}")
        unknown = sorted(set(self.targets) - set(DECODER_TARGETS))
        if unknown:
            problems.append(f"model.lora.targets {unknown} are not decoder modules (choose from {DECODER_TARGETS})")
        extra = sorted(set(self.modules_to_save) - set(FULLY_TRAINABLE))
        if extra:
            problems.append(f"model.lora.modules_to_save {extra} unknown (choose from {sorted(FULLY_TRAINABLE)})")
        if problems:
            raise ValueError("\n".join(problems))


@dataclass(frozen=True)
class EvalSpec:
    """Evaluation by generation.

    Args:
        max_new_tokens: answer budget; the default answer is ~25 tokens with the Phi-3 tokenizer.
        table_samples: validation samples shown in the prediction table (fixed: the first ones).
        max_nonfinite_steps: consecutive non-finite losses tolerated (each step skipped) before stopping.
    """

    max_new_tokens: int = 48
    table_samples: int = 16
    max_nonfinite_steps: int = 5


@dataclass(frozen=True)
class DDPSettings:
    """DDP options (hardware.ddp in conf/).

    Args:
        find_unused_parameters: search the graph for weights that got no gradient after every
            backward. Not needed: every trainable weight is used in every step (the unused last
            CLIP layer is frozen, see lora.UNUSED_CLIP); True only costs time.
        gradient_as_bucket_view: gradients live in DDP's all-reduce buckets: one copy less memory.
        static_graph: tell DDP the graph never changes (lets it skip per-step bookkeeping).
    """

    find_unused_parameters: bool = False
    gradient_as_bucket_view: bool = True
    static_graph: bool = False


@dataclass(frozen=True)
class ShardingSpec:
    """How FSDP shards the model (hardware.fsdp in conf/).

    Args:
        reshard_after_forward: free each layer's gathered weights after its forward and gather them
            again in backward (ZeRO-3: least memory). False keeps them until backward (faster, more memory).
        param_dtype: dtype weights are gathered and computed in (bfloat16 halves the all-gather
            traffic); None keeps the stored dtype. train.py fills it from hardware.precision.
        reduce_dtype: dtype gradients are averaged in across ranks; float32 avoids bf16 rounding
            in the sum.
    """

    reshard_after_forward: bool = True
    param_dtype: str | None = None
    reduce_dtype: str = "float32"

    def __post_init__(self) -> None:
        for key in ("param_dtype", "reduce_dtype"):
            value = getattr(self, key)
            if value is not None and value not in DTYPES:
                raise ValueError(f"hardware.fsdp.{key} must be one of {sorted(DTYPES)} or null, got {value!r}")


@dataclass(frozen=True)
class HardwareSpec:
    """Where and how a run computes (conf/hardware/: cpu, gpu, ddp, fsdp, ...); each option states every
    key up to `gradient_clip_val`.

    Args:
        accelerator: cpu | gpu | cuda | mps | auto (Lightning's accelerators).
        devices: processes per node: a count (-1 = all), a list of device ids, or "auto" (every visible
            GPU; 1 on CPU).
        num_nodes: machines; each starts `devices` processes.
        strategy: auto (one device) | ddp | fsdp (`STRATEGIES`, phi3v.training.strategies).
        precision: Lightning's precision: 32-true, bf16-mixed (GPUs with bfloat16), 16-mixed, ...
        accumulate_grad_batches: loader batches per optimizer step; `data.global_batch_size` derives it
            when set (train.py's launch plan).
        gradient_clip_val: clip the gradient norm to this; null = no clipping.
        timeout_minutes: how long ranks wait for each other in a collective before failing.
        threads: CPU threads per rank: "auto" (the free cores, re-measured during the run; see
            phi3v.training.threads) or a fixed count >= 1 (reproducible figures).
        ddp, fsdp: the settings of those strategies.
    """

    accelerator: str
    devices: Any  # an int, a list of ids or "auto"
    num_nodes: int
    strategy: str
    precision: str
    accumulate_grad_batches: int
    gradient_clip_val: float | None
    timeout_minutes: int = 30
    threads: Any = "auto"  # "auto" or a count >= 1 (phi3v.training.threads.AUTO)
    ddp: DDPSettings = field(default_factory=DDPSettings)
    fsdp: ShardingSpec = field(default_factory=ShardingSpec)
