"""Tier 2: what the training step computes and keeps: the causal-only mask of right-padded batches,
a frozen CLIP tower without autograd, and which layers activation checkpointing recomputes."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from phi3v.config_schema import register_schemas
from phi3v.modeling import IGNORE_INDEX, build_tiny_model, padding_only_trails, training_attention_mask
from phi3v.modeling.model_spec import ModelSpec, load_base_model
from phi3v.task import PromptTemplate
from phi3v.training.lora import LoraSpec, apply_lora
from phi3v.training.module import EvalSpec, Phi3VLitModule

pytestmark = pytest.mark.unit

SPEC = ModelSpec(num_crops=1)
PROMPT = PromptTemplate().prompt()
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
        processor=processor, template=PromptTemplate(), evaluation=EvalSpec(),
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
