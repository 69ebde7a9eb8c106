"""`python -m phi3v.predict adapter=<dir> image=<file>`: describe one product photo (or one product from
several photos: `image=[front.jpg,back.jpg]`, asked in that order with one <|image_k|> each), or
`python -m phi3v.predict adapter=<run>/adapter split=test out=preds.jsonl`: predict a split of the run.

`adapter` is any phi3v export (LoRA adapter, full fine-tune or merged model). Everything about the run
is read from the run itself: the question asked and the fields read from the answer are the export's own
prompt.json, and the model its model_spec.json. For a split, an export inside a training run
(`<run>/adapter`) uses the run's catalogue and data settings (`<run>/.hydra/config.yaml`) and its
`splits.json`: `split=test` is exactly the products the run held out. `data=<group>` picks another
catalogue (its data.task must name the export's fields, with that catalogue's columns): products the
run saw are predicted by the split they had in the run; a catalogue the run never saw is predicted
whole (the command says which). An export without a run beside it splits `data=` by its data.* fractions.
Decoding is greedy, batched with left padding, and stops at `<|end|>`.
One product prints the answer and each field's parsed value (`title: ...`, one line per field). Split
predictions are written as .jsonl or .csv with one row per product (unreadable images are skipped):
  product_id, image_path, target, prediction, then per field parsed_<f>, true_<f> and <f>_error_pct (a
  number: signed, 100 * (parsed - true) / true) or <f>_match (category, text): the row of phi3v.inference,
  as in training's CSVs (the seed task: parsed_title, true_title, title_match, ..., true_price, price_error_pct;
  a product with several photos has them all in image_path, joined by ";")
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING

import hydra
from omegaconf import DictConfig, ListConfig, OmegaConf

from phi3v.cli import UsageError, check_dtype, check_export_dir, quiet_console, require, run_command, start
from phi3v.data.splits import SPLITS, has_splits

if TYPE_CHECKING:  # imported where used: a bad key is answered before seconds of torch imports
    from torch.utils.data import DataLoader

    from phi3v.data.datamodule import ProductDataModule
    from phi3v.data.spec import DataSpec
    from phi3v.modeling import Phi3VProcessor
    from phi3v.task import FieldValue, TaskSpec

log = logging.getLogger(__name__)
FORMATS = (".jsonl", ".csv")


def check_config(cfg: DictConfig) -> None:
    """Fail on bad keys before any model is built."""
    require(cfg, "adapter", ": the export directory written by phi3v.export or training")
    check_export_dir("adapter", cfg.adapter)
    check_dtype(cfg.dtype)
    if cfg.image is not None:
        for path in photo_arguments(cfg.image):
            if not Path(path).is_file():
                raise UsageError(f"image={path}: no such file")
        return
    if cfg.split not in SPLITS:
        raise UsageError(f"split={cfg.split}: choose one of {', '.join(SPLITS)}")
    if Path(cfg.out).suffix.lower() not in FORMATS:
        raise UsageError(f"out={cfg.out}: the file name must end in {' or '.join(FORMATS)}")
    if cfg.max_new_tokens < 1 or cfg.batch_size < 1:
        raise UsageError(f"max_new_tokens={cfg.max_new_tokens} and batch_size={cfg.batch_size} must be >= 1")
    if cfg.get("data") is None and run_dir_of(cfg.adapter) is None:
        raise UsageError(f"data= is required: adapter={cfg.adapter} is not inside a training run (no splits.json "
                         "beside it), so name the catalogue to predict (e.g. data=sample)")


def check_repeated_image(overrides: list[str]) -> None:
    """`image=a.jpg image=b.jpg` on the command line: Hydra keeps only the last value, so a photo would be
    left out without a word. Refused, with the list form to write instead."""
    given = [override for override in overrides if override.split("=", 1)[0].lstrip("+~") == "image"]
    if len(given) > 1:
        photos = ",".join(override.split("=", 1)[1] for override in given)
        raise UsageError(f"image= is given {len(given)} times and only the last would be used: name one product's "
                         f"photos as a list, image=[{photos}]")


def photo_arguments(value) -> list[str]:
    """The photo path(s) of `image=`: one path, or a list (`image=[front.jpg,back.jpg]`)."""
    if isinstance(value, (ListConfig, list, tuple)):
        if not value:
            raise UsageError("image=[]: name at least one photo")
        return [str(path) for path in value]
    return [str(value)]


# ---- generation ------------------------------------------------------------------------------
def predict_image(
    model, processor: Phi3VProcessor, task: TaskSpec, paths: str | os.PathLike | list, max_new_tokens: int
) -> tuple[str, dict[str, FieldValue]]:
    """The answer for one product, from one photo or several (asked in order, one <|image_k|> each), and
    its parsed fields (keyed by name; None where unreadable)."""
    from phi3v.data.images import ImageRejected, load_product_image
    from phi3v.inference import greedy_answers

    paths = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
    images = []
    for path in paths:
        try:
            images.append(load_product_image(path))
        except ImageRejected as problem:
            raise UsageError(f"image={path}: unusable image ({problem.reason}: {problem.detail})") from problem
    inputs = processor(task.prompt(len(images)), images, padding_side="left")
    answer = greedy_answers(model, processor, inputs, max_new_tokens)[0]
    return answer, task.parse(answer)


def split_batches(
    datamodule: ProductDataModule, processor: Phi3VProcessor, task: TaskSpec, split: str, batch_size: int,
    run: Path | None = None,
) -> DataLoader:
    """A generation loader over `split` (in manifest order), prompts and answers of the export's task: the
    products of `split` in the run's splits.json when `run` is given, else the datamodule's split."""
    from torch.utils.data import DataLoader

    from phi3v.data.collate import Phi3VCollator

    datamodule.prepare_data()  # builds the manifest if missing (synthetic data, downloads)
    if run is None:
        dataset = datamodule.split_products(split)
        log.info("predicting %d products of the %s split (data.val_fraction/test_fraction: no run beside the "
                 "export)", len(dataset), split)
    else:
        dataset, description = datamodule.run_products(split, run)
        print(description)
    collate = Phi3VCollator(processor, task, "generate")
    return DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=collate)


# ---- the run an export came from -------------------------------------------------------------
def run_dir_of(adapter: str | os.PathLike) -> Path | None:
    """The training run that wrote an export (`<run>/adapter`, splits.json beside it), else None."""
    parent = Path(adapter).resolve().parent
    return parent if has_splits(parent) else None


def run_data_spec(run: Path) -> DataSpec:
    """The data settings the run trained with (its Hydra record; a run of an older phi3v, whose fields were
    `data.columns.title/category/price` and `data.prompt`, as the seed task on those columns)."""
    from phi3v.config_schema import typed
    from phi3v.data.spec import DataSpec

    path = run / ".hydra" / "config.yaml"
    if not path.is_file():
        raise UsageError(f"{path} is missing: name the catalogue with data=<group> (and its data.* settings)")
    data = OmegaConf.to_container(OmegaConf.load(path).data)
    if "prompt" in data:  # recorded before data.task: the seed's fields read from the mapped columns
        from phi3v.task import DEFAULT_FIELDS

        data.pop("prompt")
        columns = data.get("columns", {})
        data["task"] = {"fields": [{**vars(spec), "column": columns.pop(spec.name, spec.column)}
                                   for spec in DEFAULT_FIELDS]}
    return typed(DataSpec, data)


def check_fields(data: TaskSpec, export: TaskSpec) -> None:
    """The catalogue's fields (data.task, read from its columns) must be the export's (its prompt.json), by
    name and type: their true values are what the export's answers are scored against."""
    if [(f.name, f.type) for f in data.fields] != [(f.name, f.type) for f in export.fields]:
        wanted = ", ".join(f"{f.name} ({f.type})" for f in export.fields)
        found = ", ".join(f"{f.name} ({f.type})" for f in data.fields)
        raise UsageError(f"the export answers the fields {wanted} (its prompt.json) but data.task has {found}: set "
                         "data.task.fields to the export's fields, with this catalogue's columns")


# ---- the command -----------------------------------------------------------------------------
def run(cfg: DictConfig) -> None:
    from phi3v.inference import load_for_inference, pick_device, prediction_rows, write_predictions

    quiet_console()
    model, processor, task = load_for_inference(cfg.adapter, dtype=cfg.dtype)
    model.to(pick_device(cfg.device))
    if cfg.image is not None:
        answer, parsed = predict_image(model, processor, task, photo_arguments(cfg.image), cfg.max_new_tokens)
        print(f"answer: {json.dumps(answer, ensure_ascii=False)}")  # quoted: a generated newline stays on its line
        print("\n".join(f"{name}: {parsed[name]}" for name in task.names))
        return
    run_dir = run_dir_of(cfg.adapter)
    from phi3v.data.datamodule import ProductDataModule

    # the catalogue named on the command line, else the run's own
    spec = OmegaConf.to_object(cfg.data) if cfg.get("data") is not None else run_data_spec(run_dir)
    check_fields(spec.task, task)
    datamodule = ProductDataModule(spec)
    datamodule.connect(processor)
    batches = split_batches(datamodule, processor, task, cfg.split, cfg.batch_size, run_dir)
    count = write_predictions(prediction_rows(model, processor, task, batches, cfg.max_new_tokens), cfg.out, task)
    print(f"wrote {count} predictions ({cfg.split} split) to {cfg.out}")


def check_command(cfg: DictConfig) -> None:
    """The command line as given (HydraConfig's overrides, when Hydra runs the command), then the composed config."""
    from hydra.core.hydra_config import HydraConfig

    if HydraConfig.initialized():
        check_repeated_image(list(HydraConfig.get().overrides.task))
    check_config(cfg)


@hydra.main(config_path="../conf", config_name="predict", version_base="1.3")
def main(cfg: DictConfig) -> None:
    run_command(check_command, run, cfg)


if __name__ == "__main__":
    start(main)
