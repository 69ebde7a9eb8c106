"""Greedy answers of the model for a left-padded generation batch (evaluation and predict share it)."""

from __future__ import annotations

import torch

from phi3v.data.collate import model_inputs
from phi3v.modeling import Phi3VProcessor


def greedy_answers(model, processor: Phi3VProcessor, inputs: dict, max_new_tokens: int) -> list[str]:
    """Greedy decoding stopped at `<|end|>`; only the new tokens are decoded."""
    device = next(model.parameters()).device
    batch = {key: value.to(device) for key, value in model_inputs(inputs).items()}
    with torch.inference_mode():
        tokens = model.generate(
            **batch,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            eos_token_id=processor.end_token_id,
            pad_token_id=processor.pad_token_id,
        )
    return processor.batch_decode(tokens[:, batch["input_ids"].shape[1] :])
