"""Greedy answers of the model for a left-padded generation batch (evaluation and predict share it)."""

from __future__ import annotations

import torch

from phi3v.data.collate import model_inputs
from phi3v.modeling import Phi3VProcessor


def greedy_answers(
    model, processor: Phi3VProcessor, inputs: dict, max_new_tokens: int, synced: bool = False
) -> list[str]:
    """Greedy decoding stopped at `<|end|>`; only the new tokens are decoded.

    `synced`: keep stepping until every rank is done (FSDP: each step all-gathers weights, so the
    ranks must run the same number of forward passes; answers are unchanged)."""
    device = next(model.parameters()).device
    batch = {key: value.to(device) for key, value in model_inputs(inputs).items()}
    with torch.no_grad():  # not inference_mode: FSDP's all-gathered weights must stay ordinary tensors
        tokens = model.generate(
            **batch,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            eos_token_id=processor.end_token_id,
            pad_token_id=processor.pad_token_id,
            synced_gpus=synced,
        )
    return processor.batch_decode(tokens[:, batch["input_ids"].shape[1] :])
