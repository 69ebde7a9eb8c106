"""Tier 2: on a bf16 base every trainable weight is held in float32 (LoRA, projector, modules trained
whole); the step, the adapter export, merging and prediction handle the mixed dtypes; under autocast
LoRA takes its bf16 input without PEFT's float32 copy, for identical results."""

from __future__ import annotations

import types

import pytest
import torch
from peft.tuners.tuners_utils import BaseTunerLayer
from PIL import Image
from safetensors import safe_open

from phi3v.inference import ADAPTER_WEIGHTS, load_for_inference
from phi3v.modeling import Phi3VForCausalLM
from phi3v.modeling.model_spec import ModelSpec, load_base_model
from phi3v.predict import predict_image
from phi3v.shipping.adapter import export_adapter, merge_adapter
from phi3v.task import TaskSpec
from phi3v.training.lora import LoraSpec, apply_lora, cast_lora_inputs
from phi3v.training.module import Phi3VLitModule

pytestmark = pytest.mark.unit

SPEC = ModelSpec(dtype="bfloat16", num_crops=1)
EVERYTHING = LoraSpec(r=4, dropout=0.0, vision=True, train_projector=True,
                      modules_to_save=("lm_head", "embed_tokens", "vision_tower"))
PROMPT = TaskSpec().prompt()


@pytest.fixture(scope="module")
def batch(processor, images):
    return processor([PROMPT, PROMPT], images, answers=["Product: A, Category: B, Full Price: 10.0", "Product: C"])


@pytest.fixture(scope="module")
def trained(batch):
    """A bf16 tiny model with LoRA on both towers and the projector trained, after one SGD step."""
    model = apply_lora(load_base_model(SPEC), LoraSpec(r=4, dropout=0.0, train_projector=True))
    model.train()
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1.0)
    model(**batch).loss.backward()
    optimizer.step()
    return model.eval()


def test_trainables_are_float32_the_base_stays_bf16_and_tiny_updates_survive(batch):
    model = apply_lora(load_base_model(SPEC), EVERYTHING)
    dtypes = {name: p.dtype for name, p in model.named_parameters()}
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert {dtypes[n] for n in trainable} == {torch.float32}
    kinds = ("lora_A", "lora_B", "img_projection.modules_to_save", "lm_head.modules_to_save",
             "embed_tokens.modules_to_save", "img_processor.modules_to_save")
    assert all(any(kind in name for name in trainable) for kind in kinds)
    assert {dtype for name, dtype in dtypes.items() if name not in trainable} == {torch.bfloat16}
    model.train()
    output = model(**batch)
    assert output.logits.dtype == torch.bfloat16  # the rest of the model computes in the base dtype
    output.loss.backward()
    projector = model.get_base_model().model.vision_embed_tokens.img_projection.modules_to_save["default"][0]
    assert projector.weight.grad.dtype == torch.float32 and projector.weight.grad.abs().sum() > 0
    # A late-schedule update of 1e-4 relative: below half a bf16 step (2^-9), so a bf16 weight would not move.
    before = projector.weight.detach().clone()
    with torch.no_grad():
        projector.weight -= 1e-4 * projector.weight.abs() * projector.weight.grad.sign()
    assert (projector.weight != before).float().mean() > 0.9
    assert (projector.weight.bfloat16() == before.bfloat16()).all()


def saved_dtypes(path) -> set[torch.dtype]:
    with safe_open(str(path), "pt") as handle:
        return {handle.get_slice(key).get_dtype() for key in handle.keys()}


def test_adapter_export_reload_merge_and_predict_on_a_bf16_base(trained, processor, batch, tmp_path):
    adapter = export_adapter(trained, processor, SPEC, TaskSpec(), tmp_path / "adapter")
    assert saved_dtypes(adapter / ADAPTER_WEIGHTS) == {"F32"}  # the float32 weights are what ships
    with torch.no_grad():
        expected = trained(**batch).logits.float()
    model, loaded_processor, task = load_for_inference(adapter)  # onto a bf16 base built from the spec
    with torch.no_grad():
        reloaded = model(**batch).logits
    assert reloaded.dtype == torch.bfloat16
    torch.testing.assert_close(reloaded.float(), expected, rtol=0, atol=0.05)
    answer, _ = predict_image(model, loaded_processor, task, write_image(tmp_path), max_new_tokens=4)
    assert isinstance(answer, str)

    merged_dir = merge_adapter(adapter, tmp_path / "merged")  # fp32 LoRA and projector folded into bf16
    assert saved_dtypes(merged_dir / "model.safetensors") == {"BF16"}
    merged = Phi3VForCausalLM.from_pretrained(merged_dir).eval()
    assert {p.dtype for p in merged.parameters()} == {torch.bfloat16}
    with torch.no_grad():
        torch.testing.assert_close(merged(**batch).logits.float(), expected, rtol=0, atol=0.05)


def write_image(directory) -> str:
    path = directory / "photo.png"
    Image.new("RGB", (320, 240), "green").save(path)
    return str(path)


# ---- LoRA's input under autocast ------------------------------------------------------------------
def autocast_step(batch, cast: bool):
    """(loss, trainable gradients, LoRA inputs' dtypes) of one bf16-autocast step on the bf16 base."""
    torch.manual_seed(0)
    model = apply_lora(load_base_model(SPEC), LoraSpec(r=4, dropout=0.0, vision=True, train_projector=True))
    cast_lora_inputs(model, cast)
    seen = set()
    for module in model.modules():
        if isinstance(module, BaseTunerLayer):
            module.lora_A["default"].register_forward_pre_hook(lambda m, args: seen.add(args[0].dtype))
    model.train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = model(**batch).loss
    loss.backward()
    return loss.detach(), {n: p.grad for n, p in model.named_parameters() if p.requires_grad}, seen


def test_lora_under_autocast_skips_the_float32_copy_for_identical_results(batch):
    loss, grads, dtypes = autocast_step(batch, cast=True)  # PEFT's default
    uncast_loss, uncast_grads, uncast_dtypes = autocast_step(batch, cast=False)
    assert dtypes == {torch.float32} and uncast_dtypes == {torch.bfloat16}
    assert torch.equal(uncast_loss, loss)
    for name, grad in grads.items():
        assert torch.equal(uncast_grads[name], grad), name


@pytest.mark.parametrize(("precision", "cast"), [("bf16-mixed", False), ("32-true", True), ("bf16-true", True)])
def test_training_skips_the_copy_only_under_autocast(processor, precision, cast):
    module = Phi3VLitModule(spec=SPEC, lora=LoraSpec(r=4), optimizer=torch.optim.AdamW, scheduler=None,
                            processor=processor, task=TaskSpec())
    module._trainer = types.SimpleNamespace(precision=precision)  # what configure_model reads of its Trainer
    module.configure_model()
    layers = [m for m in module.model.modules() if isinstance(m, BaseTunerLayer)]
    assert layers and all(layer.cast_input_dtype_enabled is cast for layer in layers)
