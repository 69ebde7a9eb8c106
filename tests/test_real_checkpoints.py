"""Tier 2: the released checkpoints' structure, config and tokenizer (no weights needed).

The key->shape maps in `../shared/golden/real/*/real_state_dict_shapes.json` come from the
original remote code on the meta device; equal maps mean the real safetensors load with zero
missing or unexpected keys.
"""

from __future__ import annotations

import json

import pytest
import torch
from golden_data import REAL_PHI3V, REAL_PHI35V
from PIL import Image

from phi3v.modeling import Phi3VConfig, Phi3VForCausalLM, Phi3VProcessor

pytestmark = pytest.mark.golden

REAL_PARAMETERS = 4_146_621_440  # bf16 bytes of the hub index / 2


def real_shapes(directory) -> dict[str, list[int]]:
    return json.loads((directory / "real_state_dict_shapes.json").read_text())["shapes"]


@pytest.mark.parametrize("directory", [REAL_PHI3V, REAL_PHI35V], ids=["phi3v-128k", "phi3.5v"])
def test_meta_model_has_exactly_the_checkpoint_keys_and_shapes(directory):
    config = Phi3VConfig.from_pretrained(directory)
    with torch.device("meta"):
        model = Phi3VForCausalLM(config)
    ours = {key: list(value.shape) for key, value in model.state_dict().items()}
    expected = real_shapes(directory)
    assert sorted(set(ours) - set(expected)) == []
    assert sorted(set(expected) - set(ours)) == []
    assert ours == expected
    assert sum(p.numel() for p in model.parameters()) == REAL_PARAMETERS


def test_hub_index_key_set_equals_ours():
    index = json.loads((REAL_PHI3V / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"]) == set(real_shapes(REAL_PHI3V))


@pytest.mark.parametrize("directory", [REAL_PHI3V, REAL_PHI35V], ids=["phi3v-128k", "phi3.5v"])
def test_real_config_reads_as_is(directory):
    raw = json.loads((directory / "config.json").read_text())
    config = Phi3VConfig.from_pretrained(directory)
    assert raw["rope_scaling"]["type"] == "su"
    assert config.rope_parameters["rope_type"] == "longrope"
    assert config.rope_parameters["short_factor"] == raw["rope_scaling"]["short_factor"]
    assert config.rope_parameters["long_factor"] == raw["rope_scaling"]["long_factor"]
    assert config.rope_parameters["original_max_position_embeddings"] == 4096
    assert config.sliding_window == raw["sliding_window"]
    # No vision_config in the released files: the tower is CLIP ViT-L/14-336.
    assert "vision_config" not in raw
    vision = config.vision_config
    assert (vision.hidden_size, vision.intermediate_size, vision.num_hidden_layers) == (1024, 4096, 24)
    assert (vision.num_attention_heads, vision.image_size, vision.patch_size) == (16, 336, 14)
    assert vision.hidden_act == "quick_gelu"
    # Written back, the legacy rope fields are there for tools that read the original format.
    saved = config.to_dict()
    assert saved["rope_scaling"]["type"] == "su"
    assert saved["rope_scaling"]["long_factor"] == raw["rope_scaling"]["long_factor"]
    assert Phi3VConfig(**saved).rope_parameters == config.rope_parameters


def test_unsupported_embedding_variant_names_the_key():
    raw = json.loads((REAL_PHI3V / "config.json").read_text())
    raw["embd_layer"]["hd_transform_order"] = "glb_sub"
    with pytest.raises(ValueError, match="embd_layer.hd_transform_order"):
        Phi3VConfig(**raw)


def grey(width: int, height: int) -> Image.Image:
    return Image.new("RGB", (width, height), (128, 128, 128))


@pytest.mark.parametrize("index", range(4))
def test_real_tokenizer_reproduces_original_processor_ids(index):
    """Input ids of the original processor with the real Phi-3-V tokenizer, exact."""
    recorded = json.loads((REAL_PHI3V / "processor_ids.json").read_text())["cases"][index]
    processor = Phi3VProcessor.from_pretrained(REAL_PHI3V, num_crops=recorded["num_crops"])
    images = [grey(w, h) for w, h in recorded["image_sizes_wh"]]
    batch = processor(recorded["prompt"], images)
    assert batch["input_ids"][0].tolist() == recorded["input_ids"]
    assert batch["image_sizes"].tolist() == recorded["image_sizes_hw_canvas"]
