"""Generator of the tiny preset's tokenizer files shipped in phi3v/assets/tiny/ (run it to rebuild them).

    python -m phi3v.assets.make_tiny_tokenizer

A small byte-fallback BPE in the same legacy SentencePiece layout as Phi-3's (any text encodes; the
Phi-3 chat tokens are special tokens with the real tokenizer's flags), learned from a deterministic
corpus of prompts and answers in the format phi3v trains on, so the files come out identical on every
run (tests/test_tiny_model.py rebuilds them and compares). Never imported by phi3v at run time.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

TINY_DIR = Path(__file__).resolve().parent / "tiny"
# Chat tokens in the order of the real tokenizer; `<|assistant|>` eats the whitespace after it.
SPECIAL_TOKENS = ["<|endoftext|>", "<|assistant|>", "<|system|>", "<|end|>", "<|user|>"]
RSTRIP_TOKENS = {"<|assistant|>"}
BPE_MERGE_VOCAB = 640  # learned subwords on top of 3 control + 256 byte tokens; ~2x shorter texts

CORPUS_WORDS = """
product category full price what is shown in this image describe the item which more expensive
scarf scarves bag bags tote trench coat coats jacket shoes sneakers boots belt belts hat cap
wallet dress shirt sweater knit cardigan skirt trousers gloves sunglasses jewellery earrings
check vintage classic heritage monogram quilted leather wool cashmere cotton silk canvas nylon
suede denim gabardine black white beige camel navy red green blue grey pink brown honey archive
small medium large mini slim oversized reversible logo print stripe embroidered women men kids
accessories ready to wear clothing footwear home n.a. usd eur
""".split()


def tiny_corpus() -> list[str]:
    """Deterministic training text: prompts, answers and prices in the format phi3v trains on."""
    lines = []
    for i, word in enumerate(CORPUS_WORDS):
        other = CORPUS_WORDS[(i * 7 + 3) % len(CORPUS_WORDS)]
        price = f"{(i * 137) % 4000 + 90:,}.00"
        lines.append(f"Product: {word.title()} {other.title()}, Category: {other.title()}s, Full Price: {price}")
        lines.append(f"What is shown in this image? {word} {other} {price} ${i * 10}")
    return lines


def write_tiny_tokenizer(directory: str | os.PathLike) -> None:
    """Train and write the tiny tokenizer files (tokenizer.json, tokenizer_config.json, special map)."""
    from tokenizers import Tokenizer, decoders, models, normalizers, processors, trainers

    def legacy_pipeline(tokenizer: Tokenizer) -> None:
        tokenizer.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
        tokenizer.decoder = decoders.Sequence(
            [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
        )

    learner = Tokenizer(models.BPE(unk_token="<unk>"))
    legacy_pipeline(learner)
    trainer = trainers.BpeTrainer(vocab_size=BPE_MERGE_VOCAB, show_progress=False, special_tokens=["<unk>"])
    learner.train_from_iterator(tiny_corpus(), trainer=trainer)
    learned = json.loads(learner.to_str())["model"]

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2}
    vocab.update({f"<0x{b:02X}>": 3 + b for b in range(256)})  # byte fallback: any text encodes
    for token, _ in sorted(learned["vocab"].items(), key=lambda item: item[1]):
        vocab.setdefault(token, len(vocab))
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in learned["merges"]]
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    legacy_pipeline(tokenizer)
    from tokenizers import AddedToken

    tokenizer.add_special_tokens([AddedToken("<unk>", special=True), AddedToken("<s>", special=True)])
    tokenizer.add_tokens([AddedToken("</s>", rstrip=True, special=False)])
    tokenizer.add_special_tokens(
        [AddedToken(t, rstrip=t in RSTRIP_TOKENS, normalized=False, special=True) for t in SPECIAL_TOKENS]
    )
    tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s>:1 $B:1", special_tokens=[("<s>", 1)]
    )
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(directory / "tokenizer.json"))
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": "<s>",
        "eos_token": "<|endoftext|>",
        "pad_token": "<|endoftext|>",
        "unk_token": "<unk>",
        "add_bos_token": True,
        "add_eos_token": False,
        "padding_side": "right",
        "clean_up_tokenization_spaces": False,
        "model_max_length": 131072,
    }
    (directory / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")


if __name__ == "__main__":
    write_tiny_tokenizer(TINY_DIR)
    print(f"wrote the tiny tokenizer to {TINY_DIR}")
