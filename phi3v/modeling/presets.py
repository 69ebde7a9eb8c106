"""Named model presets: randomly initialised models built from files shipped in the package.

- `tiny`: the real geometry with small widths and depths (CPU demo, tests).
- `random:phi3v` / `random:phi35v`: the exact released architectures of Phi-3-vision-128k-instruct and
  Phi-3.5-vision-instruct (4.15B parameters) with random weights, from their released config.json,
  tokenizer and preprocessor files. They need no download: benchmarks, memory checks and real-shape
  tests run offline. They are built on the meta device and materialised once, directly in the
  target dtype and on the target device (no float32 copy of 4B weights first): random_weights.py.

The tiny preset keeps everything that shapes the data path of the real model (336 px crops, 14 px
patches, 144 tokens per crop, the HD layout, longrope, the Phi-3 chat tokens) and shrinks only the
widths and depths, so the CPU demo and the tests exercise the same code as a real run. Its
tokenizer is a small byte-fallback BPE in the same legacy SentencePiece layout as Phi-3's, shipped
in `phi3v/assets/tiny/` and reproducible with `python -m phi3v.assets.make_tiny_tokenizer`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import torch

from .configuration import Phi3VConfig

ASSETS = Path(str(resources.files("phi3v") / "assets"))
TINY_DIR = ASSETS / "tiny"


@dataclass(frozen=True)
class Preset:
    """Where a preset's files are: config.json + preprocessor_config.json, and the tokenizer files."""

    directory: Path
    tokenizer_directory: Path


# Phi-3.5-V uses Phi-3-V's tokenizer unchanged (same 32,064 ids); its file is shipped once.
PRESETS = {
    "tiny": Preset(TINY_DIR, TINY_DIR),
    "random:phi3v": Preset(ASSETS / "phi3v", ASSETS / "phi3v"),
    "random:phi35v": Preset(ASSETS / "phi35v", ASSETS / "phi3v"),
}


def preset(name: str) -> Preset:
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
    return PRESETS[name]


def preset_dir(name: str) -> Path:
    """Directory of a named preset (config and preprocessor files; the tokenizer too, except for
    random:phi35v, whose tokenizer is random:phi3v's: see `preset(name).tokenizer_directory`)."""
    return preset(name).directory


def preset_config(name: str, **overrides) -> Phi3VConfig:
    """A preset's config; keyword overrides change single fields (e.g. num_hidden_layers=2)."""
    values = json.loads((preset_dir(name) / "config.json").read_text())
    values.update(overrides)
    return Phi3VConfig(**values)


def tiny_config(**overrides) -> Phi3VConfig:
    """The tiny preset's config; keyword overrides change single fields (e.g. num_hidden_layers=1)."""
    return preset_config("tiny", **overrides)


def build_tiny_model(seed: int = 0, dtype: torch.dtype = torch.float32, **config_overrides):
    """A randomly initialised tiny Phi3VForCausalLM, identical for the same seed."""
    from .modeling import Phi3VForCausalLM

    config = tiny_config(**config_overrides)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Phi3VForCausalLM(config)
        # Zero separators would make every separator token identical to padding; random ones
        # make the tiny model's image layout observable in tests, as in the golden model.
        embedding = model.model.vision_embed_tokens
        with torch.no_grad():
            embedding.glb_GN.normal_(std=config.initializer_range)
            embedding.sub_GN.normal_(std=config.initializer_range)
    return model.to(dtype)
