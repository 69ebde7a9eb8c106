"""Which base model and processor a run uses, and how to build them again later (export, predict).

`ModelSpec` is the schema of `model.spec` in conf/ (phi3v/config_schema.py registers the class itself), so
this module imports no torch: composing a config answers a typo in about a second. `load_base_model` and
`load_processor` import the model family when they are called.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

    from phi3v.modeling import Phi3VForCausalLM, Phi3VProcessor

SPEC_FILE = "model_spec.json"
DTYPES = ("float32", "bfloat16", "float16")  # torch's names (`torch_dtype`)
QUANTIZATIONS = ("nf4", "int8")  # bitsandbytes' 4-bit NormalFloat and 8-bit LLM.int8 (phi3v.modeling.quantization)
ATTENTION = ("sdpa", "eager", "flash_attention_2")
# activation_checkpointing: off, every chosen layer recomputed whole, selective, offload (phi3v.modeling.checkpointing)
CHECKPOINTING = (False, True, "selective", "offload")
KERNELS = ("liger",)  # kernels: null (PyTorch's) or one of these (phi3v.modeling.kernels)


def torch_dtype(name: str) -> torch.dtype:
    """The torch dtype of one of `DTYPES`."""
    import torch

    return getattr(torch, name)


@dataclass(frozen=True)
class ModelSpec:
    """A base model: a named preset (random init from `seed`) or a hub id / local snapshot.

    Args:
        name_or_path: "tiny", "random:phi3v" / "random:phi35v" (the released architectures with random
            weights, no download), "microsoft/Phi-3-vision-128k-instruct", "microsoft/Phi-3.5-vision-instruct"
            or a local snapshot directory.
        seed: initialisation seed of presets (ignored for pretrained weights).
        dtype: weights dtype: float32, bfloat16 or float16.
        attn_implementation: sdpa (default), eager or flash_attention_2.
        num_crops: HD crops per image; null = the base's own (its preprocessor_config.json: 16 for
            Phi-3-V, 4 for Phi-3.5-V and the tiny preset).
        activation_checkpointing: recompute activations in backward instead of keeping them: less
            memory, slower steps. false; true (each chosen layer's whole forward again in backward:
            least memory; 0.98 s vs 0.71 s a step on the H200 at 16 crops x batch 4); selective (keep
            the matrix products' and attention's outputs, recompute only norms, activations and
            elementwise ops); offload (true, with the layers' kept inputs in host memory). See
            phi3v.modeling.checkpointing.
        activation_checkpointing_every: checkpoint decoder layers 0, n, 2n, ... (1 = every layer);
            a larger n keeps the other layers' activations: faster steps, more memory.
        activation_checkpointing_vision: also checkpoint the CLIP layers (only matters when CLIP
            trains: a frozen tower keeps no activations for backward anyway).
        quantization: null, nf4 or int8: store the decoder's linear layers quantized (QLoRA; needs
            bitsandbytes, `pip install -e .[qlora]`); `dtype` is then their compute dtype. See
            phi3v.modeling.quantization for what is quantized and why.
        kernels: null (PyTorch's) or liger: Liger Kernel's fused RMSNorm, SwiGLU, RoPE and lm_head +
            cross-entropy (CUDA only; `pip install -e .[gpu]`). See phi3v.modeling.kernels.
    """

    name_or_path: str = "tiny"
    seed: int = 0
    dtype: str = "float32"
    attn_implementation: str = "sdpa"
    num_crops: int | None = None
    activation_checkpointing: bool | str = False
    activation_checkpointing_every: int = 1
    activation_checkpointing_vision: bool = True
    quantization: str | None = None
    kernels: str | None = None

    def __post_init__(self) -> None:
        problems = []
        if self.dtype not in DTYPES:
            problems.append(f"model.spec.dtype must be one of {sorted(DTYPES)}, got {self.dtype!r}")
        if self.attn_implementation not in ATTENTION:
            problems.append(
                f"model.spec.attn_implementation must be sdpa, eager or flash_attention_2, got "
                f"{self.attn_implementation!r}"
            )
        if not (isinstance(self.activation_checkpointing, bool) or self.activation_checkpointing in CHECKPOINTING):
            problems.append(
                "model.spec.activation_checkpointing must be one of "
                f"{', '.join(str(mode).lower() for mode in CHECKPOINTING)}, got {self.activation_checkpointing!r}"
            )
        if self.activation_checkpointing_every < 1:
            problems.append(
                f"model.spec.activation_checkpointing_every must be >= 1 (1 = every decoder layer), got "
                f"{self.activation_checkpointing_every}"
            )
        elif not self.activation_checkpointing and (
            self.activation_checkpointing_every != 1 or not self.activation_checkpointing_vision
        ):
            problems.append(
                "model.spec.activation_checkpointing_every / activation_checkpointing_vision choose which layers "
                "are checkpointed, but model.spec.activation_checkpointing is false: set it to true, or leave "
                "them at 1 / true"
            )
        if self.quantization is not None and self.quantization not in QUANTIZATIONS:
            problems.append(
                f"model.spec.quantization must be null or one of {', '.join(QUANTIZATIONS)}, got {self.quantization!r}"
            )
        if self.kernels is not None and self.kernels not in KERNELS:
            problems.append(f"model.spec.kernels must be null or one of {', '.join(KERNELS)}, got {self.kernels!r}")
        if problems:
            raise ValueError("\n".join(problems))

    def for_inference(self) -> ModelSpec:
        """The same model without activation checkpointing (nothing to recompute without backward) and
        with PyTorch's kernels (inference runs anywhere, the CPU included)."""
        return replace(
            self, activation_checkpointing=False, activation_checkpointing_every=1,
            activation_checkpointing_vision=True, kernels=None,
        )

    @property
    def is_preset(self) -> bool:
        from phi3v.modeling.presets import PRESETS  # imports torch: only when a model is built or exported

        return self.name_or_path in PRESETS

    def save(self, directory: str | os.PathLike) -> None:
        Path(directory).mkdir(parents=True, exist_ok=True)
        (Path(directory) / SPEC_FILE).write_text(json.dumps(asdict(self), indent=1) + "\n")

    @classmethod
    def load(cls, directory: str | os.PathLike) -> ModelSpec:
        path = Path(directory) / SPEC_FILE
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found: {directory} is not an adapter/export written by phi3v")
        return cls(**json.loads(path.read_text()))


def load_base_model(spec: ModelSpec, device: str | torch.device | None = None) -> Phi3VForCausalLM:
    """The base model with every parameter frozen-or-not as loaded (LoRA decides later).

    `device` (default: torch's current default device, which Lightning sets to the rank's GPU inside
    `configure_model`) is where the random presets' weights are allocated and initialised, so a 4B
    model is built on the GPU directly; pretrained weights load on the CPU and move with the trainer.
    """
    import torch

    from phi3v.modeling import Phi3VForCausalLM, build_tiny_model
    from phi3v.modeling.checkpointing import checkpoint_options
    from phi3v.modeling.kernels import apply_kernels
    from phi3v.modeling.quantization import quantize_decoder
    from phi3v.modeling.random_weights import build_random_model

    dtype = torch_dtype(spec.dtype)
    device = torch.get_default_device() if device is None else device
    if spec.name_or_path == "tiny":
        model = build_tiny_model(seed=spec.seed, dtype=dtype)
        model.set_attn_implementation(spec.attn_implementation)
    elif spec.is_preset:
        model = build_random_model(  # quantized layer by layer as it is built: never whole in dtype
            spec.name_or_path, seed=spec.seed, dtype=dtype, device=device, quantization=spec.quantization
        )
        model.set_attn_implementation(spec.attn_implementation)
    else:
        model = Phi3VForCausalLM.from_pretrained(
            spec.name_or_path, dtype=dtype, attn_implementation=spec.attn_implementation
        )
    if spec.quantization:  # layer by layer on CPU, before the model moves to its device
        quantize_decoder(model, spec.quantization, dtype)
    apply_kernels(model, spec.kernels)  # raises naming model.spec.kernels where they cannot run
    if spec.activation_checkpointing:
        options, offload = checkpoint_options(spec.activation_checkpointing)
        model.activation_checkpointing_enable(
            options, every_n_layers=spec.activation_checkpointing_every, offload=offload,
            vision=spec.activation_checkpointing_vision,
        )
    return model


def load_processor(spec: ModelSpec) -> Phi3VProcessor:
    from phi3v.modeling import Phi3VImageProcessor, Phi3VProcessor, load_tokenizer
    from phi3v.modeling.presets import preset

    if not spec.is_preset:
        return Phi3VProcessor.from_pretrained(spec.name_or_path, num_crops=spec.num_crops)
    files = preset(spec.name_or_path)
    overrides = {} if spec.num_crops is None else {"num_crops": spec.num_crops}
    image_processor = Phi3VImageProcessor.from_pretrained(files.directory, **overrides)
    return Phi3VProcessor(image_processor, load_tokenizer(files.tokenizer_directory))
