"""Random weights for the real-size presets (`random:phi3v`, `random:phi35v`): the released
architectures built on the meta device and filled once, directly in the target dtype and on the
target device, layer by layer (and quantized layer by layer for QLoRA bases).
"""

from __future__ import annotations

import torch
from torch import nn

from .presets import preset_config


def build_random_model(
    name: str,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    quantization: str | None = None,
    **config_overrides,
):
    """A preset's architecture with random weights: the same values for the same seed on any device,
    in any dtype (rounded) and before quantization, so an adapter trained on one reattaches to the
    same base on another, and a QLoRA adapter merges into the base it was trained on.

    The modules are created on the meta device (no memory), then allocated in `dtype` on `device`
    one decoder layer at a time. Every random tensor (linear, embedding and patch-convolution
    weights, CLIP's class embedding, the two separators) is drawn uniformly with the variance of
    `initializer_range` by one seeded CPU generator, in float32 blocks copied into place: uniform
    draws are ~2.5x faster than normal ones on a CPU, where 4.1B draws are most of the build time.
    The model's own `_init_weights` sets the constants (norms, biases, the rotary tables in float32).

    `quantization` ("nf4" | "int8", see quantization.py) quantizes each decoder layer as soon as it is
    filled: peak memory is the unquantized rest (embeddings, lm_head, CLIP, projector) plus one layer,
    never the whole model in `dtype`. Without it, peak memory is the weights plus one 64 MiB block.
    `config_overrides` shrink it for tests: e.g. `num_hidden_layers=2` keeps the real widths.
    """
    from .modeling import Phi3VForCausalLM

    config = preset_config(name, **config_overrides)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # floating parameters are created in dtype; rotary buffers stay fp32
    try:
        with torch.device("meta"):
            model = Phi3VForCausalLM(config)
    finally:
        torch.set_default_dtype(previous)
    device = torch.device(device)
    if device.type == "meta":  # structure only: shapes, names, parameter counts, no memory
        return model
    with torch.device(device):  # init's temporaries on the target, whatever the caller's default device
        _materialise(model, config, seed, device, dtype, quantization)
    if quantization:
        from .quantization import mark_quantized

        mark_quantized(model, quantization)
    return model


def _materialise(model, config, seed: int, device: torch.device, dtype, quantization: str | None) -> None:
    layers = {id(layer): index for index, layer in enumerate(model.model.layers)}
    inside = {id(m) for layer in model.model.layers for m in layer.modules()}
    for module in model.modules():  # everything but the decoder layers, which come one at a time
        if id(module) not in inside:
            module.to_empty(device=device, recurse=False)
    generator = torch.Generator().manual_seed(seed)
    # The draws follow module order (pre-order, as model.modules()), the same with or without
    # quantization. A decoder layer is one unit: the walk never descends into it, so the linear
    # modules that quantizing replaces are neither visited again nor kept alive by the traversal.
    for module in _walk(model, layers):
        if id(module) in layers:
            _build_layer(model, module, f"model.layers.{layers[id(module)]}", device, generator, quantization, dtype)
        elif isinstance(module, RANDOM_MODULES):
            _draw(module.weight, config.initializer_range, generator)
    for name, parameter in model.named_parameters():
        if name.endswith(RANDOM_PARAMETERS):
            _draw(parameter, config.initializer_range, generator)
    model.initialize_weights()  # the constants outside the layers (done layers are marked initialised)


RANDOM_MODULES = (nn.Linear, nn.Embedding, nn.Conv2d)
# CLIP's class token and the HD separators (random, not zero: zero separators equal padding)
RANDOM_PARAMETERS = ("class_embedding", "glb_GN", "sub_GN")


def random_tensors(model: nn.Module) -> list[torch.Tensor]:
    """The parameters a random preset draws, in draw order; every other one is a constant."""
    weights = [m.weight for m in model.modules() if isinstance(m, RANDOM_MODULES)]
    return weights + [p for n, p in model.named_parameters() if n.endswith(RANDOM_PARAMETERS)]


def _walk(module: nn.Module, units: dict[int, int]):
    yield module
    if id(module) not in units:
        for child in module.children():
            yield from _walk(child, units)


def _build_layer(model, layer: nn.Module, name: str, device, generator, quantization: str | None, dtype) -> None:
    """Allocate, fill and initialise one decoder layer, then quantize it if asked."""
    layer.to_empty(device=device)
    for module in layer.modules():
        if isinstance(module, RANDOM_MODULES):
            _draw(module.weight, model.config.initializer_range, generator)
    for module in layer.modules():
        model._initialize_weights(module)  # norms; drawn weights are marked and left alone
    if quantization:
        from .quantization import quantize_layer

        quantize_layer(layer, quantization, dtype, name=name)
    for module in layer.modules():  # quantized or not, initialize_weights must not touch it again
        module._is_hf_initialized = True


def _draw(tensor: torch.Tensor, std: float, generator: torch.Generator) -> None:
    fill_uniform_(tensor, std, generator)
    tensor._is_hf_initialized = True  # transformers' init leaves it alone


SCRATCH_ELEMENTS = 1 << 24  # float32 draws per block: 64 MiB of scratch


@torch.no_grad()
def fill_uniform_(tensor: torch.Tensor, std: float, generator: torch.Generator) -> None:
    """Uniform(-a, a) with a = std * sqrt(3) (variance std^2), drawn on the CPU in float32 blocks
    and copied into `tensor` (any dtype, any device): never a float32 copy of a whole tensor."""
    bound = std * 3**0.5
    flat = tensor.view(-1)
    # on the CPU explicitly: callers may run under another default device (Lightning's configure_model)
    scratch = torch.empty(min(flat.numel(), SCRATCH_ELEMENTS), dtype=torch.float32, device="cpu")
    for start in range(0, flat.numel(), SCRATCH_ELEMENTS):
        block = scratch[: min(SCRATCH_ELEMENTS, flat.numel() - start)]
        block.uniform_(-bound, bound, generator=generator)
        flat[start : start + block.numel()].copy_(block)
