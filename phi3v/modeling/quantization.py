"""QLoRA bases: the decoder's linear layers stored in 4 bit (nf4) or 8 bit (int8) with bitsandbytes.

Only the decoder's four projections of every layer (qkv_proj, o_proj, gate_up_proj, down_proj) are
quantized: they hold 3.6B of Phi-3-V's 4.2B parameters, so that is where the memory is. The rest stays
in the compute dtype:
  - CLIP (0.3B) and the projector (22M): the image features feed every answer token, quantizing
    them costs accuracy for ~0.4 GB saved; the projector is usually trained whole.
  - embeddings and lm_head (2 x 98M): the lm_head's logits decide each token (bitsandbytes and
    QLoRA keep it unquantized too), and both may be trained whole (`model.lora.modules_to_save`).
  - norms: a few thousand weights each, no memory to win.

Layers are replaced one at a time: the full-precision weight of a layer is freed as soon as its
quantized copy exists, so quantizing never holds a second copy of the model, only of one matrix
and bitsandbytes' temporaries (measured at real widths on CPU: +0.66 GB peak RSS for nf4, ~11 s per
decoder layer on 2 busy cores; a GPU quantizes far faster).
"""

from __future__ import annotations

import logging
from functools import cache

import torch
from torch import nn

from .model_spec import QUANTIZATIONS

QUANTIZED_PROJECTIONS = ("self_attn.qkv_proj", "self_attn.o_proj", "mlp.gate_up_proj", "mlp.down_proj")
# LLM.int8's outlier threshold: input features above it are multiplied in the compute dtype
# (bitsandbytes' and transformers' default for 8-bit loading).
INT8_OUTLIER_THRESHOLD = 6.0
INSTALL_HINT = "pip install -e .[qlora]  (or: pip install 'bitsandbytes>=0.50')"


class QuantizationUnavailable(RuntimeError):
    """bitsandbytes is missing or cannot quantize on this machine."""


@cache
def require_bitsandbytes(kind: str):
    """The bitsandbytes module, after quantizing a small tensor with `kind` on the default device (as
    quantize_decoder would). Raises QuantizationUnavailable naming the fix when it is missing or cannot
    run here."""
    if kind not in QUANTIZATIONS:
        raise ValueError(f"model.spec.quantization must be one of {QUANTIZATIONS} or null, got {kind!r}")
    fix = f"Install it with `{INSTALL_HINT}`, or train without quantization: model.spec.quantization=null"
    try:
        import bitsandbytes as bnb
    except Exception as error:  # ImportError, or a native library that fails to load (OSError, RuntimeError)
        raise QuantizationUnavailable(
            f"model.spec.quantization={kind} needs bitsandbytes, which could not be imported ({error}). {fix}"
        ) from error
    try:
        probe = nn.Linear(64, 64, bias=False, device="meta")  # no random init: the global RNG stays untouched
        probe.weight = nn.Parameter(torch.linspace(-1, 1, 64 * 64).reshape(64, 64))
        _quantized_linear(bnb, probe, kind, torch.float32)
    except Exception as error:
        version = getattr(bnb, "__version__", "?")
        raise QuantizationUnavailable(
            f"model.spec.quantization={kind}: bitsandbytes {version} cannot quantize on this machine ({error}). "
            f"bitsandbytes >= 0.50 runs {kind} on CPU and CUDA. {fix}"
        ) from error
    return bnb


def quantize_decoder(model: nn.Module, kind: str, compute_dtype: torch.dtype) -> nn.Module:
    """Replace the decoder's projections of `model` (a Phi3VForCausalLM) by bitsandbytes layers, in place.

    Args:
        model: weights materialised on CPU (after `from_pretrained`, or a preset built at random),
            layer by layer is enough: each layer is quantized from the weights it holds then.
        kind: "nf4" (4 bit NormalFloat with double quantization: the QLoRA recipe, ~0.52 bytes per
            weight) or "int8" (LLM.int8 with outlier threshold 6: 1 byte per weight, closer to the original).
        compute_dtype: dtype nf4 layers dequantize to for their matrix products (bfloat16 on GPUs,
            float32 on CPU); int8 layers compute in their input's dtype.

    Layers a loader already quantized with `kind` (quantize_layer, while materialising layer by layer)
    are kept; a layer quantized with another kind is an error. Returns the same model; the quantized
    weights have requires_grad False (LoRA trains beside them).
    """
    for index, layer in enumerate(model.model.layers):
        quantize_layer(layer, kind, compute_dtype, name=f"model.layers.{index}")
    mark_quantized(model, kind)
    return model


def mark_quantized(model: nn.Module, kind: str) -> None:
    """Set the flags transformers sets on a bitsandbytes-loaded model: PEFT reads them to wrap the
    quantized layers in its bitsandbytes-aware LoRA layers (without them it falls back to plain ones)."""
    model.is_loaded_in_4bit = kind == "nf4"
    model.is_loaded_in_8bit = kind == "int8"


class _Int8CastNotice(logging.Filter):
    """Drops bitsandbytes' "inputs will be cast ... to float16" warning, logged on every int8 matrix
    product that multiplies in int8 (each layer of each generated token: thousands of lines per
    validation). The cast is how LLM.int8 works, not something the user can change."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "inputs will be cast from" not in record.getMessage()


def _quiet_int8_notice() -> None:
    logger = logging.getLogger("bitsandbytes.autograd._functions")
    if not any(isinstance(f, _Int8CastNotice) for f in logger.filters):
        logger.addFilter(_Int8CastNotice())


def quantize_layer(layer: nn.Module, kind: str, compute_dtype: torch.dtype, name: str = "decoder layer") -> nn.Module:
    """Quantize one decoder layer's projections in place (see quantize_decoder); projections already
    quantized with `kind` are kept. A loader that materialises the model layer by layer calls this on
    each layer right after filling it, then `mark_quantized(model, kind)` (or quantize_decoder)."""
    bnb = require_bitsandbytes(kind)
    if kind == "int8":
        _quiet_int8_notice()
    for path in QUANTIZED_PROJECTIONS:
        parent_name, child = path.split(".")
        parent = getattr(layer, parent_name)
        linear = getattr(parent, child)
        if is_quantized(linear):
            if quantized_kind(linear) != kind:
                raise ValueError(f"{name}.{path} is already quantized as {quantized_kind(linear)}, not {kind}")
            continue
        if linear.weight.is_meta:
            raise ValueError(
                f"{name}.{path} has no weights yet (meta device): materialise the layer on CPU before quantizing it"
            )
        setattr(parent, child, _quantized_linear(bnb, linear, kind, compute_dtype))
        del linear  # the full-precision matrix is freed here, before the next one is quantized
    return layer


def _quantized_linear(bnb, linear: nn.Linear, kind: str, compute_dtype: torch.dtype) -> nn.Module:
    """A bitsandbytes layer holding `linear`'s weights quantized on `linear`'s device."""
    device = linear.weight.device
    weight = linear.weight.detach()
    bias = linear.bias is not None
    if kind == "nf4":
        layer = bnb.nn.Linear4bit(
            linear.in_features, linear.out_features, bias=bias, compute_dtype=compute_dtype,
            compress_statistics=True, quant_type="nf4", device="meta",
        )
        # Moving a Params4bit to a device quantizes it. compress_statistics = double quantization: the
        # scale (absmax) of each block of 64 weights is itself stored in 8 bits, so the scales cost
        # ~0.127 instead of 0.5 bits per weight.
        layer.weight = bnb.nn.Params4bit(
            weight.to(compute_dtype), requires_grad=False, compress_statistics=True, quant_type="nf4"
        ).to(device)
        # On CPUs with AVX512-BF16, bitsandbytes repacks nf4 weights in place at the first eval-mode
        # forward, and its kernel for the repacked layout has no backward: after a validation pass,
        # training would silently lose every gradient that flows through the base layers. Off: eval
        # and training use one layout (the repacked one only speeds up CPU inference).
        layer.support_avx512bf16_for_cpu = False
    else:
        layer = bnb.nn.Linear8bitLt(
            linear.in_features, linear.out_features, bias=bias, has_fp16_weights=False,
            threshold=INT8_OUTLIER_THRESHOLD, device="meta",
        )
        # Int8Params quantizes when moved from the CPU (to any device, the CPU included): a weight
        # already on a GPU would otherwise stay unquantized.
        layer.weight = bnb.nn.Int8Params(weight.cpu(), requires_grad=False, has_fp16_weights=False).to(device)
        layer.register_forward_pre_hook(_follow_int8_weight)
    if layer.weight.dtype not in (torch.uint8, torch.int8):
        raise RuntimeError(f"bitsandbytes left a {kind} weight unquantized ({layer.weight.dtype} on {device})")
    if bias:
        layer.bias = nn.Parameter(linear.bias.detach().to(compute_dtype), requires_grad=False)
    return layer


def _follow_int8_weight(layer: nn.Module, args) -> None:
    """Forward pre-hook of int8 layers: compute with the weight the layer holds now.

    bitsandbytes keeps the int8 matrix and its row scales also as plain attributes (weight.CB/SCB,
    then state.CB/SCB). `model.to(device)` moves a parameter by swapping its `.data`, which leaves
    those attributes on the old device: a model quantized on CPU and then moved to a GPU (Lightning,
    predict) would multiply with CPU tensors. Re-pointing them costs two pointer checks per call."""
    weight = layer.weight
    for holder in (weight, layer.state):
        if getattr(holder, "CB", None) is not None and holder.CB.data_ptr() != weight.data_ptr():
            holder.CB = weight.data
        if getattr(holder, "SCB", None) is not None and holder.SCB.device != weight.device:
            holder.SCB = holder.SCB.to(weight.device)


def is_quantized(module: nn.Module) -> bool:
    """A bitsandbytes 4-bit or 8-bit linear layer (without importing bitsandbytes)."""
    kind = type(module)
    return kind.__name__ in ("Linear4bit", "Linear8bitLt") and kind.__module__.startswith("bitsandbytes")


def quantized_kind(module: nn.Module) -> str | None:
    """"nf4" or "int8" for a bitsandbytes layer, else None."""
    if not is_quantized(module):
        return None
    return "int8" if type(module).__name__ == "Linear8bitLt" else module.weight.quant_type


def is_quantized_model(model: nn.Module) -> bool:
    return any(is_quantized(module) for module in model.modules())


def weight_bytes(model: nn.Module) -> int:
    """Bytes of every stored tensor of `model` (parameters, buffers, quantization scales), each storage
    counted once (tied weights): what the weights occupy in memory."""
    seen, total = set(), 0
    for tensor in model.state_dict(keep_vars=False).values():
        if not isinstance(tensor, torch.Tensor) or tensor.is_meta:
            continue
        key = (tensor.device, tensor.untyped_storage().data_ptr())
        if key in seen:
            continue
        seen.add(key)
        total += tensor.untyped_storage().nbytes()
    return total
