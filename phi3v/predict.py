"""`python -m phi3v.predict adapter=<dir> image=<file>`: describe one product photo, or
`python -m phi3v.predict adapter=<dir> data=<group> split=test out=preds.jsonl`: predict a whole split.

`adapter` is any phi3v export (LoRA adapter, full fine-tune or merged model). The question asked is
the export's own prompt.json, whatever `data.prompt` says, because that is what the model learned.
Decoding is greedy, batched with left padding, and stops at `<|end|>`.
Split predictions are written as .jsonl or .csv with one row per product (unreadable images are skipped):
  product_id, image_path, target, prediction, parsed_title, parsed_category, parsed_price, true_price, pct_error
"""

from __future__ import annotations

import logging
import os
import sys
import warnings
from collections.abc import Iterable, Iterator
from pathlib import Path

import hydra
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import DataLoader
from transformers.utils import logging as hf_logging

from phi3v.config_schema import register_schemas
from phi3v.data.collate import Phi3VCollator
from phi3v.data.datamodule import ProductDataModule
from phi3v.data.images import ImageRejected, load_product_image
from phi3v.data.prompts import ParsedAnswer, PromptTemplate
from phi3v.modeling import Phi3VProcessor
from phi3v.training.answers import greedy_answers
from phi3v.training.export import load_for_inference
from phi3v.training.model_spec import DTYPES
from phi3v.training.reporting import write_rows

log = logging.getLogger(__name__)
COLUMNS = (
    "product_id", "image_path", "target", "prediction",
    "parsed_title", "parsed_category", "parsed_price", "true_price", "pct_error",
)
FORMATS = (".jsonl", ".csv")
SPLITS = ("train", "val", "test")

# Typed schemas for conf/ (the data group's defaults name them); must precede composition.
register_schemas()


class UsageError(Exception):
    """A bad command-line value; the message names the key (printed as one line, exit code 1)."""


def check_config(cfg: DictConfig) -> None:
    """Fail on bad keys before any model is built."""
    if OmegaConf.is_missing(cfg, "adapter"):
        raise UsageError("adapter= is required: the export directory written by phi3v.export or training")
    if not Path(cfg.adapter).is_dir():
        raise UsageError(f"adapter={cfg.adapter}: no such directory")
    if not (Path(cfg.adapter) / "model_spec.json").is_file():
        raise UsageError(f"adapter={cfg.adapter}: not a phi3v export (no model_spec.json in it)")
    if cfg.dtype is not None and cfg.dtype not in DTYPES:
        raise UsageError(f"dtype={cfg.dtype}: choose one of {', '.join(DTYPES)} (or null for the export's)")
    if cfg.image is not None:
        if not Path(cfg.image).is_file():
            raise UsageError(f"image={cfg.image}: no such file")
        return
    if cfg.split not in SPLITS:
        raise UsageError(f"split={cfg.split}: choose one of {', '.join(SPLITS)}")
    if Path(cfg.out).suffix.lower() not in FORMATS:
        raise UsageError(f"out={cfg.out}: the file name must end in {' or '.join(FORMATS)}")
    if cfg.max_new_tokens < 1 or cfg.batch_size < 1:
        raise UsageError(f"max_new_tokens={cfg.max_new_tokens} and batch_size={cfg.batch_size} must be >= 1")


# ---- generation ------------------------------------------------------------------------------
def predict_image(
    model, processor: Phi3VProcessor, template: PromptTemplate, path: str | os.PathLike, max_new_tokens: int
) -> tuple[str, ParsedAnswer]:
    """The answer for one photo and its parsed fields."""
    try:
        image = load_product_image(path)
    except ImageRejected as problem:
        raise UsageError(f"image={path}: unusable image ({problem.reason}: {problem.detail})") from problem
    inputs = processor(template.prompt(), [image], padding_side="left")
    answer = greedy_answers(model, processor, inputs, max_new_tokens)[0]
    return answer, template.parse(answer)


def prediction_rows(
    model, processor: Phi3VProcessor, template: PromptTemplate, batches: Iterable, max_new_tokens: int
) -> Iterator[dict]:
    """One output row per product of the generation batches (collator mode "generate")."""
    for batch in batches:
        meta = batch["meta"]
        for i, answer in enumerate(greedy_answers(model, processor, batch, max_new_tokens)):
            if meta["supervised"][i]:  # else the image was unreadable (logged by the dataset): no row
                yield prediction_row(meta, i, answer, template.parse(answer))


def prediction_row(meta: dict, i: int, answer: str, parsed: ParsedAnswer) -> dict:
    truth = float(meta["price"][i])
    error = None if parsed.price is None or truth == 0 else abs(parsed.price - truth) / abs(truth) * 100
    return {
        "product_id": meta["product_id"][i], "image_path": meta["image_path"][i], "target": meta["target"][i],
        "prediction": answer, "parsed_title": parsed.title, "parsed_category": parsed.category,
        "parsed_price": parsed.price, "true_price": truth, "pct_error": error,
    }


def split_batches(
    datamodule: ProductDataModule, template: PromptTemplate, split: str, batch_size: int
) -> DataLoader:
    """A generation loader over `split` (in manifest order), prompts in the export's template."""
    datamodule.prepare_data()  # builds the manifest if missing (synthetic data, downloads)
    datamodule.setup("predict")
    dataset = datamodule.datasets[split]
    log.info("predicting %d products of the %s split", len(dataset), split)
    collate = Phi3VCollator(datamodule.processor, template, "generate")
    return DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=collate)


# ---- the command -----------------------------------------------------------------------------
def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def run(cfg: DictConfig) -> None:
    hf_logging.disable_progress_bar()
    # PEFT calls a transformers property deprecated in v5: noise for users of the command, not theirs to fix.
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing", category=FutureWarning)
    model, processor, template = load_for_inference(cfg.adapter, dtype=cfg.dtype)
    model.to(pick_device(cfg.device))
    if cfg.image is not None:
        answer, parsed = predict_image(model, processor, template, cfg.image, cfg.max_new_tokens)
        print(f"answer: {answer}")
        print(f"title: {parsed.title}\ncategory: {parsed.category}\nprice: {parsed.price}")
        return
    datamodule = instantiate(cfg.data)
    datamodule.connect(processor)
    batches = split_batches(datamodule, template, cfg.split, cfg.batch_size)
    count = write_rows(prediction_rows(model, processor, template, batches, cfg.max_new_tokens), COLUMNS, cfg.out)
    print(f"wrote {count} predictions ({cfg.split} split) to {cfg.out}")


@hydra.main(config_path="../conf", config_name="predict", version_base="1.3")
def main(cfg: DictConfig) -> None:
    try:
        check_config(cfg)
        run(cfg)
    except UsageError as problem:
        print(f"error: {problem}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
