"""The native Phi-3-Vision / Phi-3.5-Vision model family on transformers 5.

Everything model-specific lives in this package; the rest of phi3v sees
`model(**batch).loss`, `model.generate(...)` and the processor.

Importing the package imports nothing heavy: each name below is loaded from its module on first use
(a module-level `__getattr__`, PEP 562: a language feature, no library needed). So the package's
torch-free modules, `model_spec.py` (the ModelSpec the config composes) and the chat format of
`tokenizer.py`, serve config composition without importing torch or transformers.
"""

from __future__ import annotations

import importlib

_HOMES = {  # name -> the module of this package that defines it
    "Phi3VConfig": "configuration",
    "Phi3VImageProcessor": "image_processing",
    "padding_only_trails": "masking",
    "training_attention_mask": "masking",
    "IGNORE_INDEX": "modeling",
    "Phi3VForCausalLM": "modeling",
    "Phi3VModel": "modeling",
    "build_tiny_model": "presets",
    "preset_dir": "presets",
    "tiny_config": "presets",
    "Phi3VProcessor": "processing",
    "quantize_decoder": "quantization",
    "chat_prompt": "tokenizer",
    "load_tokenizer": "tokenizer",
}
__all__ = sorted([*_HOMES, "register_auto_classes"])


def __getattr__(name: str):
    if name not in _HOMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_HOMES[name]}", __name__), name)


def __dir__() -> list[str]:
    return sorted({*globals(), *_HOMES})


def register_auto_classes() -> None:
    """Make `AutoConfig`/`AutoModelForCausalLM`/`AutoProcessor` resolve model_type `phi3_v` to phi3v's
    classes, so released snapshots load without `trust_remote_code`. Idempotent. phi3v itself loads
    with its own classes and never needs this; call it before using transformers' Auto classes."""
    from transformers import AutoConfig, AutoImageProcessor, AutoModelForCausalLM, AutoProcessor

    from .configuration import Phi3VConfig
    from .image_processing import Phi3VImageProcessor
    from .modeling import Phi3VForCausalLM
    from .processing import Phi3VProcessor

    AutoConfig.register(Phi3VConfig.model_type, Phi3VConfig, exist_ok=True)
    AutoModelForCausalLM.register(Phi3VConfig, Phi3VForCausalLM, exist_ok=True)
    AutoImageProcessor.register(Phi3VConfig, slow_image_processor_class=Phi3VImageProcessor, exist_ok=True)
    AutoProcessor.register(Phi3VConfig, Phi3VProcessor, exist_ok=True)
