"""Known third-party console noise, filtered by the entry points (never at import): messages that tell
a phi3v user nothing they can act on. Each entry names its source; nothing phi3v logs is filtered.
"""

from __future__ import annotations

import logging
import re
import warnings

# (warning message regex, why it is noise)
WARNINGS = (
    # transformers 5 deprecates a property PEFT still reads: PEFT's to fix, not the user's.
    (r".*is_gradient_checkpointing.* is deprecated", "transformers/PEFT"),
    # Lightning's own use of torch's pytree API.
    (r".*isinstance\(treespec, LeafSpec\)", "lightning/_pytree"),
)
# logger name -> message regexes (logging records of third-party libraries)
LOG_LINES = {
    # Advertisements and restatements of the settings we passed.
    "lightning.pytorch.utilities.rank_zero": (
        r"💡 Tip:", r"`Trainer\(limit_\w+_batches=1(\.0)?\)` was configured", r"Loading `train_dataloader` to estimate",
    ),
    # bitsandbytes looks for optional CPU kernels at import; without them it uses its own.
    "bitsandbytes.backends.cpu.ops": (r"Failed to load CPU gemm_4bit_forward",),
}


class _DropMatching(logging.Filter):
    def __init__(self, patterns: tuple[str, ...]):
        super().__init__()
        self.pattern = re.compile("|".join(patterns))

    def filter(self, record: logging.LogRecord) -> bool:
        return not self.pattern.search(record.getMessage())


def quiet_third_party() -> None:
    """Install the filters (idempotent enough: one more filter of the same kind changes nothing)."""
    for message, _source in WARNINGS:
        warnings.filterwarnings("ignore", message=message)
    for name, patterns in LOG_LINES.items():
        logging.getLogger(name).addFilter(_DropMatching(patterns))


def lightning_logs_through_root() -> None:
    """Lightning gives its `lightning` logger a console handler of its own (at import); under Hydra,
    whose root handlers print to the console and to train.log, every Lightning line would appear
    twice. Call after importing Lightning: its lines then go through the root handlers only."""
    if not logging.getLogger().hasHandlers():
        return
    logger = logging.getLogger("lightning")
    for handler in list(logger.handlers):
        if type(handler) is logging.StreamHandler:
            logger.removeHandler(handler)
