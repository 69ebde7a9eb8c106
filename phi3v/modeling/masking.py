"""When a teacher-forced forward can drop the padding mask and let attention run purely causal.

With right padding every pad follows the real tokens of its row. Under causal attention a real
token only attends to earlier positions, which are all real, so its output is the same with or
without the padding mask; only the pads' own outputs change, and they carry no label. The loss
and every gradient are therefore unchanged, while SDPA without a dense (B, 1, L, L) mask can take
its causal (flash / memory-efficient) kernel and the mask is never built.

The mask is kept wherever it matters: left padding (generation), a pad between real tokens (packed
or hand-made inputs), a pad that carries a label, and any forward without labels.
"""

from __future__ import annotations

import torch

from .modeling import IGNORE_INDEX


def padding_only_trails(attention_mask: torch.Tensor, labels: torch.Tensor | None) -> bool:
    """True when every row is real tokens followed only by pads and no pad carries a label."""
    if labels is None:
        return False
    real = attention_mask.bool()  # (batch, length)
    # right padding: a real token never follows a pad, i.e. the mask never rises along a row
    rises = (real[:, 1:] & ~real[:, :-1]).any()
    labelled_pad = (labels[~real] != IGNORE_INDEX).any()
    return not bool(rises | labelled_pad)  # one host sync for both checks


def training_attention_mask(attention_mask: torch.Tensor | None, labels: torch.Tensor | None) -> torch.Tensor | None:
    """The attention mask a teacher-forced (loss) forward needs: None when the padding only trails
    (see `padding_only_trails`), else `attention_mask` unchanged.

    Loss and gradients are equal either way (tests/test_tiny_model.py proves it on the tiny model);
    only the logits at pad positions differ, and no loss reads them."""
    if attention_mask is None or padding_only_trails(attention_mask, labels):
        return None
    return attention_mask
