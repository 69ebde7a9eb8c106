"""Access to `../shared/golden`: reference outputs of Microsoft's original code (see its README).

CI clones the repo with `shared/` beside it; a missing directory is an error, not a skip.
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path

import torch
from PIL import Image
from safetensors.torch import load_file

GOLDEN = Path(__file__).resolve().parents[2] / "shared" / "golden"
TINY = GOLDEN / "phi3v-tiny"
TINY_MODEL = TINY / "model"
REAL = GOLDEN / "real"
REAL_PHI3V = REAL / "phi3v-128k-instruct"
REAL_PHI35V = REAL / "phi3.5v-instruct"

if not TINY_MODEL.is_dir():
    raise FileNotFoundError(f"golden reference data not found at {GOLDEN}; clone phi3v next to shared/")

# Manifest tolerances (manifest.json "tolerances"): fp32 matmul order / SDPA vs eager.
LOGITS_ATOL, LOGITS_RTOL = 2e-4, 1e-4
FEATURES_ATOL, FEATURES_RTOL = 1e-4, 1e-4
LOSS_ATOL = 1e-5


@cache
def manifest() -> dict:
    return json.loads((TINY / "manifest.json").read_text())


def cases() -> list[dict]:
    return manifest()["cases"]


def case_names() -> list[str]:
    return [c["name"] for c in cases()]


def case(name: str) -> dict:
    return next(c for c in cases() if c["name"] == name)


@cache
def case_tensors(name: str) -> dict[str, torch.Tensor]:
    return load_file(str(TINY / "cases" / f"{name}.safetensors"))


def case_images(name: str) -> list[Image.Image]:
    """The case's input images exactly as fed to the reference processor (opened from PNG)."""
    return [Image.open(TINY / "images" / file) for file in case(name)["images"]]


def split_answer(name: str) -> tuple[str, str]:
    """(generation prompt, answer without the final <|end|>) of a case."""
    c = case(name)
    prompt, full = c["prompt_for_generation"], c["prompt_with_answer"]
    assert full.startswith(prompt) and full.endswith("<|end|>")
    return prompt, full[len(prompt) : -len("<|end|>")]
