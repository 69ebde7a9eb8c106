"""Named model presets: randomly initialised models built from files shipped in the package.

- `tiny`: the real geometry with small widths and depths (CPU demo, tests).
- `random:phi3v` / `random:phi35v`: the exact released architectures of Phi-3-vision-128k-instruct and
  Phi-3.5-vision-instruct (4.15B parameters) with random weights, from their released config.json,
  tokenizer and preprocessor files. They need no download: benchmarks, memory checks and real-shape
  tests run offline. They are built on the meta device and materialised once, directly in the
  target dtype and on the target device (no float32 copy of 4B weights first): random_weights.py.

The tiny preset keeps everything that shapes the data path of the real model (336 px crops, 14 px
patches, 144 tokens per crop, the HD layout, longrope, the Phi-3 chat tokens) and shrinks only the
widths and depths, so the CPU demo and the tests exercise the same code as a real run. Its
tokenizer is a small byte-fallback BPE in the same legacy SentencePiece layout as Phi-3's, shipped
in `phi3v/assets/tiny/` and reproducible with `python -m phi3v.modeling.presets`.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import torch

from .configuration import Phi3VConfig

ASSETS = Path(str(resources.files("phi3v") / "assets"))
TINY_DIR = ASSETS / "tiny"


@dataclass(frozen=True)
class Preset:
    """Where a preset's files are: config.json + preprocessor_config.json, and the tokenizer files."""

    directory: Path
    tokenizer_directory: Path


# Phi-3.5-V uses Phi-3-V's tokenizer unchanged (same 32,064 ids); its file is shipped once.
PRESETS = {
    "tiny": Preset(TINY_DIR, TINY_DIR),
    "random:phi3v": Preset(ASSETS / "phi3v", ASSETS / "phi3v"),
    "random:phi35v": Preset(ASSETS / "phi35v", ASSETS / "phi3v"),
}

# Chat tokens in the order of the real tokenizer; `<|assistant|>` eats the whitespace after it.
SPECIAL_TOKENS = ["<|endoftext|>", "<|assistant|>", "<|system|>", "<|end|>", "<|user|>"]
RSTRIP_TOKENS = {"<|assistant|>"}
BPE_MERGE_VOCAB = 640  # learned subwords on top of 3 control + 256 byte tokens; ~2x shorter texts


def preset(name: str) -> Preset:
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
    return PRESETS[name]


def preset_dir(name: str) -> Path:
    """Directory of a named preset (config and preprocessor files; the tokenizer too, except for
    random:phi35v, whose tokenizer is random:phi3v's: see `preset(name).tokenizer_directory`)."""
    return preset(name).directory


def preset_config(name: str, **overrides) -> Phi3VConfig:
    """A preset's config; keyword overrides change single fields (e.g. num_hidden_layers=2)."""
    values = json.loads((preset_dir(name) / "config.json").read_text())
    values.update(overrides)
    return Phi3VConfig(**values)


def tiny_config(**overrides) -> Phi3VConfig:
    """The tiny preset's config; keyword overrides change single fields (e.g. num_hidden_layers=1)."""
    return preset_config("tiny", **overrides)


def build_tiny_model(seed: int = 0, dtype: torch.dtype = torch.float32, **config_overrides):
    """A randomly initialised tiny Phi3VForCausalLM, identical for the same seed."""
    from .modeling import Phi3VForCausalLM

    config = tiny_config(**config_overrides)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Phi3VForCausalLM(config)
        # Zero separators would make every separator token identical to padding; random ones
        # make the tiny model's image layout observable in tests, as in the golden model.
        embedding = model.model.vision_embed_tokens
        with torch.no_grad():
            embedding.glb_GN.normal_(std=config.initializer_range)
            embedding.sub_GN.normal_(std=config.initializer_range)
    return model.to(dtype)


# ---- the tiny tokenizer (generation of the shipped asset) -------------------------------------

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
