"""phi3v: config-driven LoRA fine-tuning of Phi-3-Vision / Phi-3.5-Vision on product catalogues."""

__version__ = "0.1.0"
