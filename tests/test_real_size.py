"""Tier 2: the real-size random presets (`random:phi3v`, `random:phi35v`) without downloads.

The full-depth structure is checked on the meta device (no memory). The real data path (real
widths, head counts, vocabulary, tokenizer and CLIP geometry) runs with 2 decoder and 2 CLIP layers
in float32: one LoRA step with the real recipe at num_crops 1, adapter export and reload, FSDP
units. The full-depth step is `benchmarks/train_step.py`.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import replace

import pytest
import torch
from golden_data import REAL_PHI3V, REAL_PHI35V
from PIL import Image
from test_real_checkpoints import REAL_PARAMETERS, real_shapes

from phi3v.inference import load_for_inference
from phi3v.modeling.configuration import CLIP_VIT_L_14_336
from phi3v.modeling.model_spec import ModelSpec, load_base_model, load_processor
from phi3v.modeling.presets import preset
from phi3v.modeling.random_weights import build_random_model, random_tensors
from phi3v.shipping.adapter import export_adapter
from phi3v.task import TaskSpec
from phi3v.training.lora import LoraSpec, apply_lora, trainable_parameter_names
from phi3v.training.sharding import shard_units

pytestmark = pytest.mark.unit

# The released recipe (conf/model/phi3v.yaml): LoRA r 32 on the decoder projections + the projector.
RECIPE = LoraSpec(r=32, alpha=64, dropout=0.05, train_projector=True)
SHALLOW = {"num_hidden_layers": 2, "vision_config": {**CLIP_VIT_L_14_336, "num_hidden_layers": 2}}


@pytest.mark.parametrize(("name", "golden"), [("random:phi3v", REAL_PHI3V), ("random:phi35v", REAL_PHI35V)])
def test_shipped_files_are_the_released_ones(name, golden):
    files = preset(name)
    assert json.loads((files.directory / "config.json").read_text()) == json.loads((golden / "config.json").read_text())
    tokenizer = (files.tokenizer_directory / "tokenizer.json").read_bytes()
    assert tokenizer == (REAL_PHI3V / "tokenizer.json").read_bytes()


@pytest.mark.parametrize(("name", "golden"), [("random:phi3v", REAL_PHI3V), ("random:phi35v", REAL_PHI35V)])
def test_full_depth_structure_is_the_released_checkpoint(name, golden):
    model = build_random_model(name, dtype=torch.bfloat16, device="meta")
    shapes = {key: list(value.shape) for key, value in model.state_dict().items()}
    assert shapes == real_shapes(golden)
    assert sum(p.numel() for p in model.parameters()) == REAL_PARAMETERS
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    assert model.model.rotary_emb.inv_freq.dtype == torch.float32  # the rotary table keeps its precision


@pytest.mark.parametrize("name", ["random:phi3v", "random:phi35v"])
def test_processor_of_a_random_preset_uses_the_released_files(name):
    processor = load_processor(ModelSpec(name_or_path=name))
    assert processor.image_processor.num_crops == (16 if name == "random:phi3v" else 4)
    assert processor.tokenizer.convert_tokens_to_ids("<|end|>") == 32007
    assert load_processor(ModelSpec(name_or_path=name, num_crops=1)).image_processor.num_crops == 1


def test_bf16_weights_are_the_float32_draws_rounded():
    full = build_random_model("tiny", seed=1, dtype=torch.float32)
    half = build_random_model("tiny", seed=1, dtype=torch.bfloat16)
    assert torch.equal(half.lm_head.weight, full.lm_head.weight.to(torch.bfloat16))


def test_random_model_is_seeded_and_initialised_everywhere():
    first = build_random_model("tiny", seed=3)
    again = build_random_model("tiny", seed=3)
    other = build_random_model("tiny", seed=4)
    pairs = list(zip(first.state_dict().values(), again.state_dict().values(), other.state_dict().values()))
    assert all(torch.equal(a, b) for a, b, _ in pairs)
    assert not torch.equal(first.lm_head.weight, other.lm_head.weight)
    # to_empty leaves garbage: every tensor must have been written by the initialisation
    for name, tensor in first.state_dict().items():
        assert torch.isfinite(tensor.float()).all(), name
    std = first.config.initializer_range
    for weight in (first.lm_head.weight, first.model.layers[0].mlp.down_proj.weight):
        assert abs(float(weight.std()) - std) < 0.03 * std  # uniform with the configured variance
        assert float(weight.abs().max()) <= std * 3**0.5
    norms = [m.weight for m in first.modules() if type(m).__name__ in ("Phi3RMSNorm", "LayerNorm")]
    assert norms and all(torch.equal(w, torch.ones_like(w)) for w in norms)
    # only the generator's draws are random (the same on any device): everything else is a constant
    drawn = {id(t) for t in random_tensors(first)}
    for name, parameter in first.named_parameters():
        if id(parameter) not in drawn:
            assert parameter.unique().numel() == 1, name
    # rotary tables and CLIP position ids equal those of a normally constructed model
    reference = dict(build_random_model("tiny", device="meta").named_buffers())
    from phi3v.modeling import build_tiny_model

    constructed = dict(build_tiny_model().named_buffers())
    assert reference.keys() == constructed.keys()
    for name, buffer in first.named_buffers():
        assert torch.equal(buffer, constructed[name]), name


@pytest.fixture(scope="module")
def shallow_real():
    """Phi-3-V's real widths (3072 / 32 heads / 32,064 tokens, CLIP ViT-L/14-336) at depth 2 + 2."""
    torch.manual_seed(0)
    spec = ModelSpec(name_or_path="random:phi3v", num_crops=1)
    model = build_random_model("random:phi3v", seed=0, dtype=torch.float32, **SHALLOW)
    return spec, model, load_processor(spec)


@pytest.mark.slow
def test_one_lora_step_at_real_width_then_export_and_reload(shallow_real, tmp_path, monkeypatch):
    spec, base, processor = shallow_real
    config = base.config
    assert (config.hidden_size, config.num_attention_heads, config.vocab_size) == (3072, 32, 32064)
    assert config.vision_config.hidden_size == 1024
    model = apply_lora(base, RECIPE)
    trainable = trainable_parameter_names(model)
    assert any("img_projection" in n for n in trainable) and any("lora_A" in n for n in trainable)
    task = TaskSpec()
    photo = Image.new("RGB", (640, 480), (200, 180, 150))
    prompt = task.prompt()
    batch = processor([prompt], [photo], answers=["Product: Check Scarf, Category: Scarves, Full Price: 490.00"])
    # num_crops 1: one crop + the global view = 2 x 144 + 1 + 12 + 12 separator tokens
    assert int((batch["input_ids"] < 0).sum()) == 313
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    model.train()
    loss = model(**batch).loss
    assert torch.isfinite(loss)
    loss.backward()
    grads = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
    assert all(g is not None for g in grads.values())
    # lora_B starts at zero, so its gradient is what moves the model first
    assert all(float(g.abs().sum()) > 0 for n, g in grads.items() if "lora_B" in n)
    optimizer.step()
    changed = [n for n, p in model.named_parameters() if p.requires_grad and not torch.equal(p, before[n])]
    assert any("lora_B" in n for n in changed) and any("img_projection" in n for n in changed)

    # export, then rebuild the base from model_spec.json and reload the adapter: same logits
    model.eval()
    with torch.no_grad():
        expected = model(**batch).logits
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = export_adapter(model, processor, spec, task, tmp_path / "adapter")
    # no hub lookup of the base's name ("Phi-3-vision-128k-instruct") while saving a random preset's adapter
    assert not [w for w in caught if "config" in str(w.message) and "Phi-3" in str(w.message)]
    monkeypatch.setattr("phi3v.modeling.random_weights.build_random_model",
                        lambda *a, **k: build_random_model(*a, **{**k, **SHALLOW}))
    reloaded, reloaded_processor, _ = load_for_inference(out)
    assert reloaded_processor.image_processor.num_crops == 1
    with torch.no_grad():
        again = reloaded(**batch).logits
    torch.testing.assert_close(again, expected, atol=1e-4, rtol=1e-4)


def test_fsdp_units_at_real_depth_are_every_decoder_and_clip_layer():
    model = build_random_model("random:phi3v", dtype=torch.bfloat16, device="meta")
    units = shard_units(model)
    kinds = sorted({type(unit).__name__ for unit in units})
    assert kinds == ["CLIPEncoderLayer", "Phi3DecoderLayer"]
    assert len(units) == 32 + 24


def test_load_base_model_builds_random_presets_in_the_spec_dtype(monkeypatch):
    seen = {}

    def fake(name, seed, dtype, device, **overrides):
        seen.update(name=name, seed=seed, dtype=dtype, device=device)
        return build_random_model("tiny", seed=seed, dtype=dtype, device=device)

    monkeypatch.setattr("phi3v.modeling.random_weights.build_random_model", fake)
    spec = replace(ModelSpec(name_or_path="random:phi35v", dtype="bfloat16", seed=7))
    with torch.device("meta"):  # what Lightning's configure_model context sets, here the meta device
        load_base_model(spec)
    assert seen == {"name": "random:phi35v", "seed": 7, "dtype": torch.bfloat16, "device": torch.device("meta")}


@pytest.mark.parametrize("kind", ["nf4", "int8"])
def test_quantized_while_built_equals_built_then_quantized(kind):
    """Layer-by-layer quantization during the build draws the same weights as the plain build."""
    from phi3v.modeling.quantization import quantize_decoder, quantized_kind

    streamed = build_random_model("tiny", seed=2, quantization=kind).eval()
    plain = build_random_model("tiny", seed=2)
    reference = quantize_decoder(build_random_model("tiny", seed=2), kind, torch.float32).eval()
    assert quantized_kind(streamed.model.layers[0].self_attn.qkv_proj) == kind
    assert torch.equal(streamed.lm_head.weight, plain.lm_head.weight)
    norms = streamed.model.layers[1].input_layernorm.weight
    assert torch.equal(norms, torch.ones_like(norms))
    ids = torch.arange(3, 40).unsqueeze(0)
    with torch.no_grad():
        torch.testing.assert_close(streamed(input_ids=ids).logits, reference(input_ids=ids).logits, rtol=0, atol=0)


def test_build_ignores_the_default_device_of_the_caller():
    """Lightning's configure_model runs under `torch.device(<gpu>)`: the draws must stay on the CPU
    generator's device (found on an H200: 'Expected a cuda device type for generator')."""
    expected = build_random_model("tiny", seed=5)
    with torch.device("meta"):
        built = build_random_model("tiny", seed=5, device="cpu")
    assert all(torch.equal(a, b) for a, b in zip(built.state_dict().values(), expected.state_dict().values()))


def test_quantized_build_frees_each_layer_before_the_next(monkeypatch):
    """Peak memory of a quantized build is one unquantized layer, not the model: when layer i+1 is
    quantized, the full-precision weights of layers 0..i are gone (a traversal that kept the replaced
    linear modules alive made the real-size nf4 build peak at 18 GiB instead of ~4)."""
    import gc
    import weakref

    import phi3v.modeling.quantization as quantization

    original, replaced, alive_at = quantization.quantize_layer, [], []

    def spy(layer, kind, compute_dtype, name="decoder layer"):
        gc.collect()
        alive_at.append(sum(ref() is not None for ref in replaced))
        replaced.extend(weakref.ref(m.weight) for m in layer.modules() if type(m) is torch.nn.Linear)
        return original(layer, kind, compute_dtype, name=name)

    monkeypatch.setattr(quantization, "quantize_layer", spy)
    build_random_model("tiny", seed=0, quantization="nf4", num_hidden_layers=3)
    assert len(alive_at) == 3 and alive_at == [0, 0, 0]
