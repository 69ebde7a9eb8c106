"""Tier 2: save/load round trips in the original layout, and batches equal one-by-one runs."""

from __future__ import annotations

import pytest
import torch
from golden_data import TINY_MODEL, case_images
from safetensors import safe_open
from transformers import AutoModelForCausalLM

from phi3v.modeling import Phi3VForCausalLM, Phi3VProcessor, register_auto_classes

pytestmark = pytest.mark.unit

SETTINGS = dict(max_new_tokens=8, do_sample=False, eos_token_id=None, pad_token_id=512)


@pytest.fixture(scope="module")
def model() -> Phi3VForCausalLM:
    return Phi3VForCausalLM.from_pretrained(TINY_MODEL, attn_implementation="eager").eval()


@pytest.fixture(scope="module")
def processor() -> Phi3VProcessor:
    return Phi3VProcessor.from_pretrained(TINY_MODEL, num_crops=4)  # 4 crops: the same code, less compute


def checkpoint_keys(path) -> set[str]:
    with safe_open(str(path), "pt") as f:
        return set(f.keys())


def test_save_load_round_trip_keeps_original_layout_and_logits(model, processor, tmp_path):
    batch = processor("<|user|>\n<|image_1|>\nWhat is it?<|end|>\n<|assistant|>\n", case_images("single_gray_333x222"))
    with torch.no_grad():
        before = model(**batch).logits
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    # The exported keys are exactly the reference checkpoint's (no `.wte`, `...vision_model.` kept).
    assert checkpoint_keys(tmp_path / "model.safetensors") == checkpoint_keys(TINY_MODEL / "model.safetensors")
    register_auto_classes()
    for loader in (Phi3VForCausalLM.from_pretrained, AutoModelForCausalLM.from_pretrained):
        reloaded = loader(tmp_path, attn_implementation="eager").eval()
        assert isinstance(reloaded, Phi3VForCausalLM)
        with torch.no_grad():
            after = reloaded(**Phi3VProcessor.from_pretrained(tmp_path)(
                "<|user|>\n<|image_1|>\nWhat is it?<|end|>\n<|assistant|>\n", case_images("single_gray_333x222")
            )).logits
        assert torch.equal(before, after)


def test_loading_reports_no_missing_or_unexpected_keys():
    _, info = Phi3VForCausalLM.from_pretrained(TINY_MODEL, output_loading_info=True)
    assert info["missing_keys"] == set() or info["missing_keys"] == []
    assert not info["unexpected_keys"]
    assert not info["mismatched_keys"]


def test_original_exports_with_the_wte_alias_load_cleanly(tmp_path):
    """The original module aliases embed_tokens as vision_embed_tokens.wte; exports may store it."""
    from safetensors.torch import load_file, save_file

    weights = load_file(str(TINY_MODEL / "model.safetensors"))
    weights["model.vision_embed_tokens.wte.weight"] = weights["model.embed_tokens.weight"].clone()
    for file in TINY_MODEL.iterdir():
        if file.name != "model.safetensors":
            (tmp_path / file.name).write_bytes(file.read_bytes())
    save_file(weights, str(tmp_path / "model.safetensors"), metadata={"format": "pt"})
    model, info = Phi3VForCausalLM.from_pretrained(tmp_path, output_loading_info=True)
    assert not info["unexpected_keys"] and not info["missing_keys"]
    assert torch.equal(model.model.embed_tokens.weight, weights["model.embed_tokens.weight"])


MIXED_PROMPTS = [
    ("<|user|>\nHello, what do you sell?<|end|>\n<|assistant|>\n", []),
    ("<|user|>\n<|image_1|>\nWhat is shown in this image?<|end|>\n<|assistant|>\n", ["landscape_300x200"]),
    (
        "<|user|>\n<|image_1|>\n<|image_2|>\nCompare them.<|end|>\n<|assistant|>\n",
        ["portrait_200x640", "extreme_64x900"],
    ),
    ("<|user|>\n<|image_1|>\nPrice?<|end|>\n<|assistant|>\n", ["rgba_500x300"]),
]


def images_for(names):
    from golden_data import TINY
    from PIL import Image

    return [Image.open(TINY / "images" / f"{n}.png") for n in names]


def test_batched_forward_equals_one_by_one(model, processor):
    prompts = [p for p, _ in MIXED_PROMPTS]
    images = [images_for(names) for _, names in MIXED_PROMPTS]
    batch = processor(prompts, images, padding_side="right")
    with torch.no_grad():
        batched = model(**batch).logits
    for row, (prompt, group) in enumerate(zip(prompts, images)):
        single = processor(prompt, group or None)
        length = single["input_ids"].shape[1]
        assert torch.equal(batch["input_ids"][row, :length], single["input_ids"][0])
        with torch.no_grad():
            alone = model(**single).logits[0]
        torch.testing.assert_close(batched[row, :length], alone, atol=1e-4, rtol=1e-4)


def test_batched_left_padded_generation_equals_one_by_one(model, processor):
    prompts = [p for p, _ in MIXED_PROMPTS]
    images = [images_for(names) for _, names in MIXED_PROMPTS]
    batch = processor(prompts, images, padding_side="left")
    assert (batch["attention_mask"][:, 0] == 0).any(), "the batch must actually contain left padding"
    with torch.no_grad():
        batched = model.generate(**batch, **SETTINGS)[:, batch["input_ids"].shape[1] :]
    for row, (prompt, group) in enumerate(zip(prompts, images)):
        single = processor(prompt, group or None)
        with torch.no_grad():
            alone = model.generate(**single, **SETTINGS)[0, single["input_ids"].shape[1] :]
        assert batched[row].tolist() == alone.tolist()
