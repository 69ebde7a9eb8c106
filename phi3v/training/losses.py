"""Token losses as sums and counts, so they can be added up across ranks exactly.

The model's own `loss` is the mean over one batch's supervised tokens. Distributed training and
evaluation need sums and counts instead: the loss of a global batch (or a whole split) is then the
sum over ranks divided by the token count over ranks, whatever the split into ranks and batches.
Training asks the model for the sum (`num_items_in_batch=1`, so fused kernels can compute it without
logits) and counts the tokens with `supervised_tokens`; evaluation computes per-sample sums from the
logits here.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from phi3v.modeling import IGNORE_INDEX


def per_sample_loss(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(summed cross-entropy (batch,) float32, supervised tokens (batch,) int64) of next-token prediction.

    Only the supervised positions are gathered before the float32 upcast: ~40 answer tokens per
    sample instead of ~2,500 prompt and image positions times the 32k vocabulary."""
    targets = labels[:, 1:]
    mask = targets != IGNORE_INDEX
    losses = F.cross_entropy(logits[:, :-1][mask].float(), targets[mask], reduction="none")
    rows = mask.nonzero()[:, 0]
    sums = torch.zeros(labels.shape[0], dtype=torch.float32, device=logits.device).index_add(0, rows, losses)
    return sums, mask.sum(dim=1)


def supervised_loss_sum(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(summed cross-entropy over the batch, supervised token count), both 0-d."""
    sums, tokens = per_sample_loss(logits, labels)
    return sums.sum(), tokens.sum()


def supervised_tokens(labels: torch.Tensor) -> torch.Tensor:
    """How many tokens of `labels` a next-token loss supervises (0-d int64)."""
    return (labels[:, 1:] != IGNORE_INDEX).sum()


def logits_window(labels: torch.Tensor) -> int:
    """How many trailing positions' logits a loss over `labels` needs: the model's `logits_to_keep`.

    Only the answer is supervised, so the lm_head need not run over the prompt and image positions:
    from the position that predicts the earliest supervised token of any row to the end. On the tiny
    demo that is ~25 of ~350 positions (forward + backward at batch 4 on 2 CPU cores: 70 -> 64 ms);
    on Phi-3-V ~40 of ~2,500, which spares the batch x length x 32k logits (~1.3 GB in bf16 at
    batch 4 with their gradient). Pass `labels[:, -window:]` with the logits to the functions above. A batch
    without supervised tokens keeps one position, so its empty loss still reaches every weight."""
    supervised = (labels[:, 1:] != IGNORE_INDEX).any(dim=0).nonzero()
    if supervised.numel() == 0:
        return 1
    return labels.shape[1] - int(supervised[0, 0])
