"""Tier 2: the loss needs the logits of the answer positions only (phi3v.training.losses.logits_window)."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from phi3v.modeling import IGNORE_INDEX
from phi3v.modeling.model_spec import ModelSpec, load_base_model, load_processor
from phi3v.training.lora import LoraSpec, apply_lora
from phi3v.training.losses import logits_window, per_sample_loss

pytestmark = pytest.mark.unit

SPEC = ModelSpec(num_crops=1)


def labels_with(length: int, supervised: dict[int, range]) -> torch.Tensor:
    labels = torch.full((len(supervised), length), IGNORE_INDEX)
    for row, positions in supervised.items():
        labels[row, list(positions)] = 7
    return labels


def test_window_starts_at_the_position_predicting_the_earliest_supervised_token_of_any_row():
    # row 1's first target sits at position 4, predicted by position 3: keep positions 3..9 = 7
    assert logits_window(labels_with(10, {0: range(6, 9), 1: range(4, 6), 2: range(0)})) == 7
    assert logits_window(labels_with(10, {0: range(9, 10)})) == 2  # the last token: positions 8 and 9
    assert logits_window(labels_with(10, {0: range(1, 3)})) == 10  # the second token: every position
    # a label at position 0 is never a target (nothing predicts it), so it does not widen the window
    assert logits_window(labels_with(10, {0: [0, 5]})) == 6
    assert logits_window(labels_with(10, {0: range(0), 1: range(0)})) == 1  # nothing supervised


def test_windowed_logits_give_the_full_losses_and_gradients():
    torch.manual_seed(0)
    model = apply_lora(load_base_model(SPEC), LoraSpec(r=4, dropout=0.0, train_projector=True))
    for name, parameter in model.named_parameters():
        if "lora_B" in name:  # non-zero B, so gradients reach every LoRA factor
            torch.nn.init.normal_(parameter, std=0.02)
    processor = load_processor(SPEC)
    # prompts of different lengths: the answers start at different positions in the two rows
    prompts = ["<|image_1|>What is shown?", "<|image_1|>What product is shown in this photo, and at what price?"]
    images = [Image.new("RGB", (300, 200), "red"), Image.new("RGB", (200, 500), "blue")]
    answers = ["Product: Longer title here, Category: D, Full Price: 2.5", "Product: A, Category: B, Full Price: 10.0"]
    batch = processor(prompts, images, answers=answers)
    labels = batch.pop("labels")
    first = [int((row != IGNORE_INDEX).nonzero()[0]) for row in labels]
    assert first[0] < first[1]  # the test's premise: the earlier answer sets the window
    window = logits_window(labels)
    assert window == labels.shape[1] - first[0] + 1 < labels.shape[1] // 2

    results = []
    for keep, targets in ((0, labels), (window, labels[:, -window:])):
        model.zero_grad()
        output = model(**batch, logits_to_keep=keep)
        sums, tokens = per_sample_loss(output.logits, targets)
        (sums.sum() / tokens.sum()).backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
        results.append((output.logits.shape, sums.detach(), tokens, grads))
    (full_shape, full_sums, full_tokens, full_grads), (shape, sums, tokens, grads) = results
    assert full_shape[1] == labels.shape[1] and shape[1] == window
    assert tokens.tolist() == full_tokens.tolist() == [int((row[1:] != IGNORE_INDEX).sum()) for row in labels]
    torch.testing.assert_close(sums, full_sums, rtol=1e-5, atol=1e-5)
    assert full_grads.keys() == grads.keys() and any("lora_A" in n for n in grads)
    for name in grads:
        torch.testing.assert_close(grads[name], full_grads[name], rtol=1e-4, atol=1e-6, msg=name)
