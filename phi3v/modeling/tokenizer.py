"""Loading the Phi-3 tokenizer so it tokenizes exactly as the original.

The released `tokenizer.json` uses the legacy SentencePiece layout (a `Prepend("▁")` normalizer and
no pre-tokenizer). transformers 5's `LlamaTokenizer` (what `AutoTokenizer` picks from
`tokenizer_class: LlamaTokenizer`) rebuilds its own pipeline from that file and produces different
ids after special tokens and for leading spaces. Loading the file verbatim as a fast tokenizer
keeps the original pipeline, and with it the ids the checkpoints were trained on.

The chat format needs no transformers: it is imported when a tokenizer is loaded, so the prompt
template (phi3v.task) composes into the config without it.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

# Phi-3 chat format: `<|role|>\n{content}<|end|>\n` per message, then `<|assistant|>\n`.
END_OF_TURN = "<|end|>"


def load_tokenizer(directory: str | os.PathLike) -> PreTrainedTokenizerBase:
    """The tokenizer of a local snapshot directory, its `tokenizer.json` used verbatim."""
    from transformers import PreTrainedTokenizerFast

    if not os.path.isfile(os.path.join(directory, "tokenizer.json")):
        raise FileNotFoundError(
            f"{directory} has no tokenizer.json; phi3v needs the fast-tokenizer file of the checkpoint"
        )
    tokenizer = PreTrainedTokenizerFast.from_pretrained(os.fspath(directory))
    if tokenizer.pad_token_id is None:
        # Phi-3 pads with <|endoftext|>; fall back to it (or EOS) for files that do not say so.
        pad = "<|endoftext|>" if "<|endoftext|>" in tokenizer.get_vocab() else tokenizer.eos_token
        tokenizer.pad_token = pad
    return tokenizer


def chat_prompt(messages: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
    """Render messages in the Phi-3 chat format (the template shipped with the checkpoints).

    Example: `[{"role": "user", "content": "<|image_1|>\\nWhat is shown?"}]` ->
    `"<|user|>\\n<|image_1|>\\nWhat is shown?<|end|>\\n<|assistant|>\\n"`.
    """
    parts = []
    for message in messages:
        role, content = message["role"], message["content"]
        if role not in ("system", "user", "assistant"):
            raise ValueError(f"chat role must be system, user or assistant, got {role!r}")
        parts.append(f"<|{role}|>\n{content}{END_OF_TURN}\n")
    if add_generation_prompt and (not messages or messages[-1]["role"] != "assistant"):
        parts.append("<|assistant|>\n")
    return "".join(parts)
