"""The native Phi-3-Vision / Phi-3.5-Vision model family on transformers 5.

Everything model-specific lives in this package; the rest of phi3v sees
`model(**batch).loss`, `model.generate(...)` and the processor.
"""

from transformers import AutoConfig, AutoImageProcessor, AutoModelForCausalLM, AutoProcessor

from .configuration import Phi3VConfig
from .image_processing import Phi3VImageProcessor
from .masking import padding_only_trails, training_attention_mask
from .modeling import IGNORE_INDEX, Phi3VForCausalLM, Phi3VModel
from .presets import build_tiny_model, preset_dir, tiny_config
from .processing import Phi3VProcessor
from .quantization import quantize_decoder
from .tokenizer import chat_prompt, load_tokenizer

__all__ = [
    "IGNORE_INDEX",
    "Phi3VConfig",
    "Phi3VForCausalLM",
    "Phi3VImageProcessor",
    "Phi3VModel",
    "Phi3VProcessor",
    "build_tiny_model",
    "chat_prompt",
    "load_tokenizer",
    "padding_only_trails",
    "preset_dir",
    "quantize_decoder",
    "register_auto_classes",
    "tiny_config",
    "training_attention_mask",
]


def register_auto_classes() -> None:
    """Make `AutoConfig`/`AutoModelForCausalLM`/`AutoProcessor` resolve model_type `phi3_v` to phi3v's
    classes, so released snapshots load without `trust_remote_code`. Idempotent. phi3v itself loads
    with its own classes and never needs this; call it before using transformers' Auto classes."""
    AutoConfig.register(Phi3VConfig.model_type, Phi3VConfig, exist_ok=True)
    AutoModelForCausalLM.register(Phi3VConfig, Phi3VForCausalLM, exist_ok=True)
    AutoImageProcessor.register(Phi3VConfig, slow_image_processor_class=Phi3VImageProcessor, exist_ok=True)
    AutoProcessor.register(Phi3VConfig, Phi3VProcessor, exist_ok=True)
