"""Tier 2: QLoRA on the tiny model (CPU): nf4/int8 decoder projections from bitsandbytes under LoRA.

Quantizing, what stays in the compute dtype, the new-user errors, training (loss falls, every LoRA
weight learns, quantized weights never change), trainable-only checkpoints. Exports, inference and
merging: test_quantization_export.py; train.py runs: test_quantization_e2e.py.
"""

from __future__ import annotations

import sys
from dataclasses import replace
from functools import partial

import pytest
import torch
from PIL import Image

from phi3v.modeling import Phi3VForCausalLM, build_tiny_model
from phi3v.modeling.model_spec import ModelSpec, load_base_model, load_processor
from phi3v.modeling.quantization import (
    QuantizationUnavailable,
    is_quantized,
    is_quantized_model,
    quantize_decoder,
    quantize_layer,
    quantized_kind,
    require_bitsandbytes,
    weight_bytes,
)
from phi3v.task import TaskSpec
from phi3v.training.lora import LoraSpec, apply_lora, trainable_parameter_names
from phi3v.training.module import Phi3VLitModule
from phi3v.training.quantized import quantized_run_problems

pytestmark = [pytest.mark.unit, pytest.mark.usefixtures("one_thread")]

SPEC = ModelSpec(num_crops=1)  # 1 crop + global view: short sequences (CPU time)
KINDS = ("nf4", "int8")
PROJECTIONS = ("self_attn.qkv_proj", "self_attn.o_proj", "mlp.gate_up_proj", "mlp.down_proj")



@pytest.fixture(scope="module")
def batch():
    images = [Image.new("RGB", (300, 200), "red"), Image.new("RGB", (200, 300), "blue")]
    answers = ["Product: A, Category: B, Full Price: 10.0", "Product: C, Category: D, Full Price: 20.0"]
    return load_processor(SPEC)([TaskSpec().prompt()] * 2, images, answers=answers)


def quantized_spec(kind: str) -> ModelSpec:
    return replace(SPEC, quantization=kind)


def frozen_quantized_state(model) -> dict[str, torch.Tensor]:
    """Copies of every stored tensor of the quantized layers: packed weights and their scales."""
    return {
        f"{name}.{key}": value.clone()
        for name, module in model.named_modules() if is_quantized(module)
        for key, value in module.state_dict().items() if isinstance(value, torch.Tensor)
    }


# ---- quantizing ------------------------------------------------------------------------------
def test_spec_rejects_an_unknown_quantization_naming_the_key():
    with pytest.raises(ValueError, match=r"model.spec.quantization must be null or one of nf4, int8, got 'fp4'"):
        ModelSpec(quantization="fp4")


@pytest.mark.parametrize("kind", KINDS)
def test_only_the_decoder_projections_are_quantized(kind):
    plain = load_base_model(SPEC)
    model = load_base_model(quantized_spec(kind))
    quantized = {name for name, module in model.named_modules() if is_quantized(module)}
    layers = model.config.num_hidden_layers
    assert quantized == {f"model.layers.{i}.{p}" for i in range(layers) for p in PROJECTIONS}
    # CLIP, the projector, embeddings, lm_head and norms keep their float32 weights, unchanged.
    plain_state = plain.state_dict()
    for name, parameter in model.named_parameters():
        if not any(name.startswith(q + ".") for q in quantized):
            assert parameter.dtype == torch.float32 and torch.equal(parameter, plain_state[name]), name
    # Packed weights: 2 nf4 values per byte, 1 byte per int8 value (scales come on top).
    for name in quantized:
        weight = model.get_submodule(name).weight
        numel = plain.get_submodule(name).weight.numel()
        assert weight.untyped_storage().nbytes() == (numel // 2 if kind == "nf4" else numel), name
    assert model.is_loaded_in_4bit == (kind == "nf4") and model.is_loaded_in_8bit == (kind == "int8")
    # The decoder's projections in nf4 take < 1/7 of their float32 bytes (0.5 + scales vs 4 bytes per
    # weight; the tiny layers' per-layer code tables weigh more than in real-size ones), int8 < 1/3.
    decoder = sum(weight_bytes(layer) for layer in model.model.layers)
    decoder_fp32 = sum(weight_bytes(layer) for layer in plain.model.layers)
    assert decoder < decoder_fp32 / (7 if kind == "nf4" else 3)


@pytest.mark.parametrize("kind, tolerance", [("nf4", 0.05), ("int8", 0.01)])
def test_quantized_model_stays_close_to_the_float_model(kind, tolerance, batch):
    """The loss of the random tiny model (~6.9) moves by less than `tolerance` (measured: nf4 0.003,
    int8 0.001); a wrongly scaled or transposed weight changes it by far more."""
    with torch.no_grad():
        expected = load_base_model(SPEC)(**batch).loss
        actual = load_base_model(quantized_spec(kind))(**batch).loss
    assert abs(actual.item() - expected.item()) < tolerance


def test_a_local_snapshot_is_quantized_like_the_preset_it_holds(batch, tmp_path):
    build_tiny_model(seed=0).save_pretrained(tmp_path / "snapshot")
    loaded = load_base_model(replace(SPEC, name_or_path=str(tmp_path / "snapshot"), quantization="nf4")).eval()
    preset = load_base_model(quantized_spec("nf4")).eval()
    assert is_quantized_model(loaded) and loaded.is_loaded_in_4bit
    with torch.no_grad():
        assert torch.equal(loaded(**batch).logits, preset(**batch).logits)


def test_layers_quantized_while_loading_are_kept_and_other_kinds_or_missing_weights_fail():
    model = build_tiny_model()
    quantize_layer(model.model.layers[0], "nf4", torch.float32)  # as a loader filling layer by layer would
    packed = model.model.layers[0].mlp.down_proj.weight
    quantize_decoder(model, "nf4", torch.float32)
    assert model.model.layers[0].mlp.down_proj.weight is packed  # kept, not quantized twice
    assert all(quantized_kind(model.get_submodule(f"model.layers.1.{p}")) == "nf4" for p in PROJECTIONS)
    with pytest.raises(ValueError, match=r"model.layers.0.self_attn.qkv_proj is already quantized as nf4, not int8"):
        quantize_decoder(model, "int8", torch.float32)
    with torch.device("meta"):
        empty = Phi3VForCausalLM(build_tiny_model().config)
    with pytest.raises(ValueError, match=r"model.layers.0.self_attn.qkv_proj has no weights yet \(meta device\)"):
        quantize_decoder(empty, "int8", torch.float32)


def test_int8_layers_compute_with_the_weights_they_hold_after_a_move():
    """`model.to(device)` swaps each parameter's data; bitsandbytes' int8 layers also keep the matrix
    as attributes, which would stay behind. Cloning every tensor is such a move on one device: after it,
    zeroing the held weight must zero the output (a stale copy would still give the old one)."""
    model = quantize_decoder(build_tiny_model(), "int8", torch.float32)
    fresh, used = model.model.layers[0].mlp.down_proj, model.model.layers[1].mlp.down_proj
    x = torch.randn(3, fresh.in_features, generator=torch.Generator().manual_seed(0))
    assert used(x).abs().sum() > 0  # bitsandbytes moves the matrix into the layer's state on the first call
    model._apply(lambda t: t.clone())
    for layer in (fresh, used):
        layer.weight.data.zero_()
        assert torch.equal(layer(x), torch.zeros(3, layer.out_features))


# ---- new-user errors -------------------------------------------------------------------------
@pytest.fixture
def fresh_check():
    require_bitsandbytes.cache_clear()
    yield
    require_bitsandbytes.cache_clear()


def test_missing_bitsandbytes_names_the_fix(monkeypatch, fresh_check):
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # `import bitsandbytes` raises ImportError
    with pytest.raises(QuantizationUnavailable) as error:
        load_base_model(quantized_spec("nf4"))
    message = str(error.value)
    assert "model.spec.quantization=nf4 needs bitsandbytes" in message
    assert "pip install -e .[qlora]" in message and "model.spec.quantization=null" in message


def test_checking_bitsandbytes_leaves_the_global_rng_alone(fresh_check):
    state = torch.get_rng_state()
    require_bitsandbytes("nf4")
    require_bitsandbytes("int8")
    assert torch.equal(torch.get_rng_state(), state)  # seeded LoRA inits stay reproducible


def test_unusable_bitsandbytes_names_the_fix(monkeypatch, fresh_check):
    import bitsandbytes

    def no_kernel(*args, **kwargs):
        raise RuntimeError("no kernel for this device")

    monkeypatch.setattr(bitsandbytes.nn.Int8Params, "to", no_kernel)
    with pytest.raises(QuantizationUnavailable, match=r"cannot quantize on this machine \(no kernel for this device\)"):
        require_bitsandbytes("int8")


def test_quantized_runs_refuse_fsdp_and_full_finetunes_with_what_to_use_instead():
    assert quantized_run_problems("nf4", "ddp", lora_enabled=True) == []
    assert quantized_run_problems("int8", "auto", lora_enabled=True) == []
    assert quantized_run_problems(None, "fsdp", lora_enabled=False) == []
    fsdp, full = quantized_run_problems("nf4", "fsdp", lora_enabled=False)
    assert "hardware.strategy=fsdp cannot shard a quantized base" in fsdp
    assert "hardware=ddp" in fsdp and "model.spec.quantization=null" in fsdp
    assert "model.lora.enabled=false" in full and "model.lora.enabled=true" in full


# ---- training ----------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", KINDS)
def test_qlora_trains_every_lora_weight_and_never_the_quantized_base(kind, batch):
    model = apply_lora(load_base_model(quantized_spec(kind)), LoraSpec(r=4, alpha=8, dropout=0.0))
    adapted = [m for m in model.modules() if type(m).__module__ == "peft.tuners.lora.bnb"]
    assert len(adapted) == 2 * 4  # PEFT's bitsandbytes-aware LoRA layers, 4 per decoder layer
    names = trainable_parameter_names(model)
    assert names and all("lora_" in n for n in names)
    assert all(p.dtype == torch.float32 for p in model.parameters() if p.requires_grad)
    before = frozen_quantized_state(model)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    losses = []
    for _ in range(4):
        optimizer.zero_grad()
        loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    # measured: 6.90 -> 6.12 (nf4), 6.90 -> 6.14 (int8) at lr 1e-2; each step lower than the last
    assert all(b < a for a, b in zip(losses, losses[1:])) and losses[-1] < losses[0] - 0.5, losses
    for name, parameter in model.named_parameters():  # lora_B starts at 0: lora_A's gradient from step 2 on
        if parameter.requires_grad:
            assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name
    after = frozen_quantized_state(model)
    assert after.keys() == before.keys() and len(before) > 8
    for key, value in before.items():
        assert torch.equal(after[key], value), key


@pytest.mark.parametrize("kind", KINDS)
def test_an_evaluation_pass_changes_neither_the_weights_nor_later_gradients(kind, batch):
    """Validation runs the model in eval mode without gradients; on AVX512-BF16 CPUs bitsandbytes
    would then repack nf4 weights into a layout whose kernel has no backward (quantization.py)."""
    torch.manual_seed(0)
    model = apply_lora(load_base_model(quantized_spec(kind)), LoraSpec(r=4, alpha=8, dropout=0.0))
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.fill_(0.01)

    def loss_and_gradients():
        model.train().zero_grad()
        loss = model(**batch).loss
        loss.backward()
        return loss.item(), {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}

    loss, gradients = loss_and_gradients()
    before = frozen_quantized_state(model)
    model.eval()
    with torch.no_grad():  # int8 on CPU: eval multiplies in int8, training in float (bitsandbytes' CPU paths)
        assert model(**batch).loss.item() == pytest.approx(loss, abs=0 if kind == "nf4" else 1e-3)
    after = frozen_quantized_state(model)
    assert after.keys() == before.keys() and all(torch.equal(after[k], v) for k, v in before.items())
    loss_again, gradients_again = loss_and_gradients()
    assert loss_again == loss
    for name, grad in gradients.items():
        torch.testing.assert_close(gradients_again[name], grad, atol=0, rtol=0, msg=name)


def test_activation_checkpointing_on_a_quantized_base_gives_the_same_gradients(batch):
    """Non-reentrant checkpoints (transformers 5's default) need no input gradients, so PEFT's
    prepare_model_for_kbit_training is not used (see phi3v.training.quantized)."""
    gradients = []
    for checkpointing in (False, True):
        spec = replace(quantized_spec("nf4"), activation_checkpointing=checkpointing)
        torch.manual_seed(0)  # the same random lora_A in both models
        model = apply_lora(load_base_model(spec), LoraSpec(r=4, alpha=8, dropout=0.0)).train()
        with torch.no_grad():  # nonzero lora_B, so every LoRA weight gets a gradient in one backward
            for name, parameter in model.named_parameters():
                if "lora_B" in name:
                    parameter.fill_(0.01)
        model(**batch).loss.backward()
        gradients.append({n: p.grad for n, p in model.named_parameters() if p.requires_grad})
    assert gradients[0].keys() == gradients[1].keys()
    for name, grad in gradients[0].items():
        assert grad.abs().sum() > 0, name
        torch.testing.assert_close(gradients[1][name], grad, atol=1e-6, rtol=1e-5, msg=name)


def test_checkpoints_hold_only_lora_weights_and_load_back_onto_a_fresh_quantized_base(batch):
    def module():
        lit = Phi3VLitModule(
            spec=quantized_spec("nf4"), lora=LoraSpec(r=4, dropout=0.0), optimizer=partial(torch.optim.AdamW, lr=1e-3),
            scheduler=None, processor=None, task=TaskSpec(),
        )
        lit.configure_model()
        return lit

    trained = module()
    with torch.no_grad():
        for parameter in trained.parameters():
            if parameter.requires_grad:
                parameter.add_(0.01)
    checkpoint = {"state_dict": trained.state_dict()}
    trained.on_save_checkpoint(checkpoint)
    assert set(checkpoint["state_dict"]) == set(trained.trainable_names())
    assert all("lora_" in key for key in checkpoint["state_dict"])  # no packed weights, no quantization scales
    resumed = module()
    missing, unexpected = resumed.load_state_dict(checkpoint["state_dict"], strict=False)
    assert not unexpected and not set(missing) & set(checkpoint["state_dict"])
    resumed.on_load_checkpoint(checkpoint)
    with torch.no_grad():
        assert torch.equal(resumed.model(**batch).logits, trained.model(**batch).logits)
