"""Tier 2: what the training step computes and keeps: the causal-only mask of right-padded batches,
a frozen CLIP tower without autograd, which layers activation checkpointing recomputes, and what
selective checkpointing and offload keep (the same loss and gradients as no checkpointing)."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from torch.utils._python_dispatch import TorchDispatchMode

from phi3v.config_checks import config_problems
from phi3v.config_schema import register_schemas
from phi3v.modeling import IGNORE_INDEX, build_tiny_model, checkpointing, padding_only_trails, training_attention_mask
from phi3v.modeling.checkpointing import CHECKPOINTING, checkpoint_options
from phi3v.modeling.model_spec import ModelSpec, load_base_model
from phi3v.task import TaskSpec
from phi3v.training.lora import LoraSpec, apply_lora
from phi3v.training.module import EvalSpec, Phi3VLitModule

pytestmark = pytest.mark.unit

SPEC = ModelSpec(num_crops=1)
PROMPT = TaskSpec().prompt()
ANSWERS = ["Product: Check Wool Scarf, Category: Scarves, Full Price: 490.00", "Product: x"]


@pytest.fixture(scope="module")
def batch(processor, images):
    """Right-padded: the second answer is shorter, so its row ends in pads without labels."""
    batch = processor([PROMPT, PROMPT], images, answers=ANSWERS, padding_side="right")
    assert (batch["attention_mask"][1] == 0).sum() > 5 and (batch["attention_mask"][0] == 1).all()
    return batch


# ---- the padding mask ---------------------------------------------------------------------------
def test_mask_is_dropped_only_when_every_pad_trails_unlabelled():
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]])
    labels = torch.tensor([[IGNORE_INDEX, 5, 6, 7], [IGNORE_INDEX, 5, IGNORE_INDEX, IGNORE_INDEX]])
    assert padding_only_trails(mask, labels) and training_attention_mask(mask, labels) is None
    left = torch.tensor([[1, 1, 1, 1], [0, 0, 1, 1]])
    inside = torch.tensor([[1, 1, 1, 1], [1, 0, 1, 1]])
    for kept in (left, inside):
        assert training_attention_mask(kept, labels.clamp(max=IGNORE_INDEX)) is kept
    labelled_pad = labels.clone()
    labelled_pad[1, 3] = 9
    assert training_attention_mask(mask, labelled_pad) is mask
    assert training_attention_mask(mask, None) is mask  # no labels (generation, predict): keep it
    assert training_attention_mask(None, labels) is None


def loss_and_gradients(model, batch, attention_mask):
    model.zero_grad()
    loss = model(**{**batch, "attention_mask": attention_mask}).loss
    loss.backward()
    return loss.detach(), {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


def test_causal_only_attention_gives_the_masked_loss_and_gradients(batch, processor, images):
    """Right padding: dropping the mask changes no supervised logit, so loss and every gradient agree to
    float32 rounding (rtol 1e-5, atol 1e-7: SDPA's masked and causal paths sum in another order)."""
    model = build_tiny_model(seed=5).train()
    mask = training_attention_mask(batch["attention_mask"], batch["labels"])
    assert mask is None
    masked_loss, masked_grads = loss_and_gradients(model, batch, batch["attention_mask"])
    causal_loss, causal_grads = loss_and_gradients(model, batch, mask)
    torch.testing.assert_close(causal_loss, masked_loss, rtol=1e-6, atol=0)
    assert masked_grads.keys() == causal_grads.keys() and len(masked_grads) > 40  # every weight that feeds the loss
    for name, grad in masked_grads.items():
        torch.testing.assert_close(causal_grads[name], grad, rtol=1e-5, atol=1e-7, msg=name)
    # The same shortcut on left padding would change the loss: the mask matters there and is kept.
    left = processor([PROMPT, PROMPT], images, answers=ANSWERS, padding_side="left")
    assert training_attention_mask(left["attention_mask"], left["labels"]) is left["attention_mask"]
    with torch.no_grad():
        kept = model(**left).loss
        dropped = model(**{**left, "attention_mask": None}).loss
    assert abs(float(kept) - float(dropped)) > 1e-4  # >10x the loss tolerance above (~7e-6)
    torch.testing.assert_close(kept, masked_loss, rtol=1e-5, atol=1e-6)  # left and right padding agree


class OneRank:
    world_size = 1


def test_training_step_runs_decoder_attention_without_a_mask(batch, processor, monkeypatch):
    """SDPA gets no dense mask and is_causal=True, so a GPU can take its flash / causal kernel."""
    module = Phi3VLitModule(
        spec=SPEC, lora=LoraSpec(r=4, dropout=0.0), optimizer=partial(torch.optim.AdamW, lr=1e-3), scheduler=None,
        processor=processor, task=TaskSpec(), evaluation=EvalSpec(),
    )
    module.configure_model()
    monkeypatch.setattr(Phi3VLitModule, "trainer", property(lambda self: OneRank()))
    monkeypatch.setattr(module, "log", lambda *a, **k: None)
    calls, sdpa = [], torch.nn.functional.scaled_dot_product_attention

    def spy(query, key, value, attn_mask=None, is_causal=False, **kwargs):
        calls.append((query.shape[-2], attn_mask is None, is_causal))
        return sdpa(query, key, value, attn_mask=attn_mask, is_causal=is_causal, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", spy)
    meta = {"supervised": [True, True], "skipped_images": 0}
    loss = module.training_step({**batch, "meta": meta}, 0)
    length = batch["input_ids"].shape[1]
    decoder = [call for call in calls if call[0] == length]
    assert len(decoder) == 2 and all(no_mask and causal for _, no_mask, causal in decoder)
    torch.testing.assert_close(loss, module.model(**batch).loss)  # the masked model's own loss


# ---- the frozen vision tower --------------------------------------------------------------------
def clip_trace(model, batch) -> tuple[bool, int]:
    """(CLIP's output requires grad, forward calls of CLIP layer 0's attention in forward + backward)."""
    inner = model.get_base_model().model.vision_embed_tokens
    seen, calls = [], []
    handles = [
        inner.img_processor.register_forward_hook(lambda module, args, output: seen.append(output.requires_grad)),
        model.get_base_model().vision_layers()[0].self_attn.register_forward_pre_hook(lambda *_: calls.append(1)),
    ]
    try:
        model.train()
        model(**batch).loss.backward()
    finally:
        for handle in handles:
            handle.remove()
    return seen == [True], len(calls)


@pytest.mark.parametrize(
    ("lora", "tower_grad"),
    [
        (LoraSpec(r=4, train_projector=True), False),
        (LoraSpec(r=4, vision=True), True),
        (LoraSpec(r=4, modules_to_save=("vision_tower",)), True),
    ],
    ids=["frozen", "clip-lora", "clip-trained"],
)
def test_a_frozen_clip_runs_without_autograd_under_checkpointing(batch, lora, tower_grad):
    checkpointed = ModelSpec(num_crops=1, activation_checkpointing=True)
    model = apply_lora(load_base_model(checkpointed), lora)
    requires_grad, calls = clip_trace(model, batch)
    assert requires_grad is tower_grad
    assert calls == (2 if tower_grad else 1)  # a trained tower recomputes in backward; a frozen one never
    if lora.train_projector:
        projector = model.get_base_model().model.vision_embed_tokens.img_projection
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in projector.parameters() if p.requires_grad)


# ---- which layers recompute ---------------------------------------------------------------------
def recompute_counts(model, batch) -> tuple[list[int], int]:
    """Forward calls per decoder layer and of CLIP layer 0 during one forward + backward: 2 = recomputed."""
    base = model.get_base_model()
    counts = {}
    layers = [*base.model.layers, base.vision_layers()[0]]
    handles = [
        layer.self_attn.register_forward_pre_hook(lambda *_, i=i: counts.__setitem__(i, counts.get(i, 0) + 1))
        for i, layer in enumerate(layers)
    ]
    try:
        model.train()
        model(**batch).loss.backward()
    finally:
        for handle in handles:
            handle.remove()
    return [counts[i] for i in range(len(layers) - 1)], counts[len(layers) - 1]


@pytest.mark.parametrize(
    ("options", "decoder", "clip"),
    [
        (None, [1, 1, 1, 1], 1),
        ({"every_n_layers": 1}, [2, 2, 2, 2], 2),
        ({"every_n_layers": 2}, [2, 1, 2, 1], 2),
        ({"every_n_layers": 3}, [2, 1, 1, 2], 2),
        ({"every_n_layers": 1, "vision": False}, [2, 2, 2, 2], 1),
    ],
    ids=["off", "every-layer", "every-2nd", "every-3rd", "decoder-only"],
)
def test_checkpointing_recomputes_exactly_the_chosen_layers(batch, options, decoder, clip):
    base = build_tiny_model(seed=1, num_hidden_layers=4)
    if options is not None:
        base.activation_checkpointing_enable(**options)
    model = apply_lora(base, LoraSpec(r=4, vision=True))  # CLIP trains, so its layers can recompute
    assert recompute_counts(model, batch) == (decoder, clip)


def test_checkpointing_settings_reach_the_model_and_fail_naming_the_key():
    spec = ModelSpec(activation_checkpointing=True, activation_checkpointing_every=2,
                     activation_checkpointing_vision=False)
    model = load_base_model(spec)
    assert [layer.gradient_checkpointing for layer in model.model.layers] == [True, False]
    assert not any(layer.gradient_checkpointing for layer in model.vision_layers())
    plain = load_base_model(ModelSpec(activation_checkpointing=True))  # true = every layer of both towers
    assert all(layer.gradient_checkpointing for layer in [*plain.model.layers, *plain.vision_layers()])
    assert spec.for_inference() == ModelSpec()
    with pytest.raises(ValueError, match=r"model\.spec\.activation_checkpointing_every must be >= 1"):
        ModelSpec(activation_checkpointing=True, activation_checkpointing_every=0)
    with pytest.raises(ValueError, match=r"model\.spec\.activation_checkpointing is false: set it to true"):
        ModelSpec(activation_checkpointing_every=2)


def test_checkpointing_keys_compose_from_the_command_line(model="phi3v"):
    register_schemas()
    with initialize_config_dir(config_dir=str(Path(__file__).resolve().parents[1] / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=[f"model={model}", "model.spec.activation_checkpointing=true",
                                          "model.spec.activation_checkpointing_every=4",
                                          "model.spec.activation_checkpointing_vision=false"])
        spec = OmegaConf.to_object(cfg.model.spec)
        assert (spec.activation_checkpointing_every, spec.activation_checkpointing_vision) == (4, False)
        bad = compose("train", overrides=[f"model={model}", "model.spec.activation_checkpointing=false",
                                          "model.spec.activation_checkpointing_every=2"])
        with pytest.raises(Exception, match=r"model\.spec\.activation_checkpointing is false"):
            OmegaConf.to_object(bad.model.spec)
        for mode in ("selective", "offload"):
            chosen = compose("train", overrides=[f"model={model}", f"model.spec.activation_checkpointing={mode}"])
            assert config_problems(chosen) == []
            assert OmegaConf.to_object(chosen.model.spec).activation_checkpointing == mode
        wrong = compose("train", overrides=[f"model={model}", "model.spec.activation_checkpointing=partial"])
        assert config_problems(wrong) == [
            "model.spec.activation_checkpointing=partial: must be one of false, true, selective, offload"]


# ---- selective checkpointing and offload --------------------------------------------------------
def step_results(spec: ModelSpec, batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """(loss, every trainable gradient) of one forward + backward with LoRA dropout 0.1 (recomputed
    with the same random draws) on decoder and CLIP, so every layer of both towers is checkpointed."""
    base = load_base_model(spec)
    torch.manual_seed(0)  # the same LoRA initialisation and dropout draws for every mode
    model = apply_lora(base, LoraSpec(r=4, dropout=0.1, vision=True, train_projector=True))
    model.train()
    loss = model(**batch).loss
    loss.backward()
    return loss.detach(), {name: p.grad for name, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("mode", [True, "selective", "offload"])
def test_every_checkpointing_mode_gives_the_loss_and_gradients_of_none(batch, mode):
    loss, grads = step_results(ModelSpec(num_crops=1), batch)
    checkpointed_loss, checkpointed_grads = step_results(ModelSpec(num_crops=1, activation_checkpointing=mode), batch)
    assert torch.equal(checkpointed_loss, loss)
    assert checkpointed_grads.keys() == grads.keys() and len(grads) > 20  # LoRA of both towers + projector
    for name, grad in grads.items():
        assert torch.equal(checkpointed_grads[name], grad), name


class OpCounts(TorchDispatchMode):
    """Counts the aten ops that reach the kernels: products served from selective checkpointing's
    cache do not."""

    def __init__(self):
        super().__init__()
        self.counts = {"thick products": 0, "thin products": 0, "attention": 0}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func in checkpointing._ATTENTION:
            self.counts["attention"] += 1
        elif func in checkpointing._MATRIX_PRODUCTS:
            inner = (args[1] if func in (torch.ops.aten.addmm.default, torch.ops.aten.baddbmm.default) else args[0])
            self.counts["thin products" if inner.shape[-1] <= checkpointing.THIN_PRODUCT else "thick products"] += 1
        return func(*args, **(kwargs or {}))


def op_counts(mode, batch) -> dict[str, int]:
    base = build_tiny_model(seed=1)
    if mode:
        options, offload = checkpoint_options(mode)
        base.activation_checkpointing_enable(options, offload=offload)
    base.enable_input_require_grads()  # as checkpointing does: the same backward products in every mode
    model = apply_lora(base, LoraSpec(r=4))
    model.train()
    with OpCounts() as counter:
        model(**batch).loss.backward()
    return counter.counts


def test_selective_checkpointing_recomputes_no_base_product_and_no_attention(batch):
    off, full, selective = (op_counts(mode, batch) for mode in (False, True, "selective"))
    layers = len(build_tiny_model().model.layers)
    # full checkpointing runs each decoder layer's 4 base products + 4 LoRA A products and attention again
    assert full["thick products"] == off["thick products"] + layers * 8
    assert full["attention"] == off["attention"] + layers
    assert (selective["thick products"], selective["attention"]) == (off["thick products"], off["attention"])
    # LoRA's B products (rank 4 -> out) are recomputed under both (up to the last one backward needs)
    assert selective["thin products"] == full["thin products"] > off["thin products"]


def test_offload_keeps_each_checkpointed_layer_input_through_save_on_cpu(batch, monkeypatch):
    entered = []
    real = checkpointing.save_on_cpu

    def spy(**kwargs):
        entered.append(kwargs)
        return real(**kwargs)

    monkeypatch.setattr(checkpointing, "save_on_cpu", spy)
    spec = ModelSpec(num_crops=1, activation_checkpointing="offload", activation_checkpointing_every=2,
                     activation_checkpointing_vision=False)
    model = apply_lora(load_base_model(spec), LoraSpec(r=4))
    model.train()
    model(**batch).loss.backward()
    layers = len(model.get_base_model().model.layers)
    assert layers > 1 and entered == [{"pin_memory": False}] * len(range(0, layers, 2))  # no CUDA here: no pinning


def test_checkpointing_mode_is_checked_naming_the_key():
    for mode in CHECKPOINTING:
        assert ModelSpec(activation_checkpointing=mode).activation_checkpointing == mode
    with pytest.raises(ValueError, match=r"model\.spec\.activation_checkpointing must be one of false, true, "
                                         r"selective, offload, got 'partial'"):
        ModelSpec(activation_checkpointing="partial")
    selective = ModelSpec(activation_checkpointing="selective", activation_checkpointing_every=2)
    assert selective.for_inference() == ModelSpec()


@pytest.mark.parametrize("mode", [False, "selective"])
def test_regionally_compiled_layers_give_the_same_loss_and_gradients(batch, mode):
    """torch.compile of each decoder and CLIP layer (as benchmarks/gpu.py --compile; the aot_eager backend
    traces forward and backward as inductor does, without generating code) stacks with no checkpointing
    and with selective checkpointing. Full checkpointing does not compile on torch 2.13: SDPA counts as
    a random op (its dropout) and the partitioner refuses random ops in recomputed regions."""
    spec = ModelSpec(num_crops=1, activation_checkpointing=mode)
    expected_loss, expected = step_results(spec, batch)
    torch._dynamo.reset()
    base = load_base_model(spec)
    for layer in [*base.model.layers, *base.vision_layers()]:
        layer.compile(backend="aot_eager")
    torch.manual_seed(0)
    model = apply_lora(base, LoraSpec(r=4, dropout=0.1, vision=True, train_projector=True))
    model.train()
    loss = model(**batch).loss
    loss.backward()
    assert torch.equal(loss.detach(), expected_loss)
    for name, parameter in model.named_parameters():
        if parameter.requires_grad:
            torch.testing.assert_close(parameter.grad, expected[name], rtol=0, atol=1e-6)
