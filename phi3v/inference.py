"""Using a fine-tune: loading an export, greedy answers, and the prediction row every consumer writes.

Used by `phi3v.predict` (one photo or a split), the web demo (phi3v/demo), training's evaluation
(greedy answers, and the callback's prediction CSVs) and phi3v/shipping/adapter.py (a merge or a copy
loads the export first).

An export directory (written by phi3v.shipping.adapter) holds
  adapter_config.json + adapter_model.safetensors   (LoRA)  or  config.json + model.safetensors (full / merged)
  model_spec.json    how to rebuild the base model (phi3v.modeling.model_spec.ModelSpec)
  prompt.json        the task the model was trained with: question, answer template and typed fields
                     (phi3v.task.task_record; inference asks the same question and reads the same fields)
  processor files    tokenizer + preprocessor config, so inference never depends on the training config
  README.md          the model card; metrics.json the run's metrics of these weights (shipping/model_card.py)

An `Answer` is one product's generated answer beside its truth, the fields of both keyed by name;
its prediction row (`prediction_row`, columns `prediction_columns(task)`: the product, the answers, then one
column group per field) is the same wherever answers are written: training's predictions/*.csv, predict's
.jsonl/.csv and the demo's gallery, which reads the former. The row's `image_path` is the product's photo,
or its photos joined by ";" in the order the model saw them (`photo_paths` splits it back); a one-photo
product's row is what it always was.
"""

from __future__ import annotations

import csv
import json
import logging
import os
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from phi3v.files import atomic_write
from phi3v.modeling import Phi3VForCausalLM, Phi3VProcessor
from phi3v.modeling.batch import model_inputs
from phi3v.modeling.model_spec import ModelSpec, load_base_model, load_processor
from phi3v.task import FieldValue, TaskSpec, task_from_record
from phi3v.task.scoring import prediction_column_names
from phi3v.task.scoring import prediction_columns as field_columns

log = logging.getLogger(__name__)

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
PROMPT_FILE = "prompt.json"
PHOTO_SEPARATOR = ";"  # between the photos of one product in a prediction row's image_path
ANSWER_COLUMNS = ("product_id", "image_path", "target", "prediction")  # then one group per field


# ---- loading ---------------------------------------------------------------------------------
def is_adapter(directory: str | os.PathLike) -> bool:
    return (Path(directory) / ADAPTER_CONFIG).is_file()


def load_task(directory: str | os.PathLike) -> TaskSpec:
    """The task an export was trained with (its prompt.json, also an older export's fixed template)."""
    path = Path(directory) / PROMPT_FILE
    if not path.is_file():  # e.g. a checkpoint exported by hand: the seed's wording is the best guess
        log.warning("%s not found: using the default task (title, category, price)", path)
        return TaskSpec()
    return task_from_record(json.loads(path.read_text()))


def load_for_inference(adapter_dir: str | os.PathLike, dtype: str | None = None, quantized: bool = True):
    """Model (eval mode, frozen), processor (left padding, for generation) and task of an export.

    An adapter is attached to the base rebuilt from model_spec.json (quantized as it was trained,
    unless `quantized` is False); a full or merged export is loaded from `adapter_dir` itself (so
    the directory may be moved). `dtype` overrides the spec's (the compute dtype of a quantized base).
    Returns (PeftModel or Phi3VForCausalLM, Phi3VProcessor, TaskSpec).
    """
    from peft import PeftModel

    directory = Path(adapter_dir)
    if not directory.is_dir():
        raise FileNotFoundError(f"{directory} is not a directory")
    spec = ModelSpec.load(directory).for_inference()
    spec = replace(spec, dtype=dtype) if dtype else spec
    spec = spec if quantized else replace(spec, quantization=None)
    if is_adapter(directory):
        model = PeftModel.from_pretrained(load_base_model(spec), directory)
    else:
        model = load_base_model(replace(spec, name_or_path=str(directory)))
    model.eval().requires_grad_(False)
    # The export's own processor files (num_crops included) are what the model was trained with.
    processor = Phi3VProcessor.from_pretrained(directory, padding_side="left")
    return model, processor, load_task(directory)


def load_untrained(preset: str, dtype: str | None = None) -> tuple[Phi3VForCausalLM, Phi3VProcessor, TaskSpec]:
    """A preset's random weights (frozen, eval mode), its processor and the default task: the demo's
    model right after install, before any training."""
    spec = ModelSpec(name_or_path=preset, dtype=dtype or "float32")
    model = load_base_model(spec, device="cpu").eval().requires_grad_(False)
    return model, load_processor(spec), TaskSpec()


def pick_device(name: str) -> torch.device:
    """`auto`: CUDA when available, else the CPU; otherwise the named device."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


# ---- answering -------------------------------------------------------------------------------
def greedy_answers(
    model, processor: Phi3VProcessor, inputs: dict, max_new_tokens: int, synced: bool = False
) -> list[str]:
    """Greedy decoding of a left-padded generation batch, stopped at `<|end|>`; only the new tokens
    are decoded.

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


def prediction_rows(
    model, processor: Phi3VProcessor, task: TaskSpec, batches: Iterable, max_new_tokens: int
) -> Iterator[dict]:
    """One row per product of generation batches (collator mode "generate"); products whose image
    was unreadable (logged by the dataset) get none."""
    for batch in batches:
        predictions = greedy_answers(model, processor, batch, max_new_tokens)
        for _, answer in answered(batch["meta"], predictions, task):
            yield answer.row(task)


# ---- answers and rows ------------------------------------------------------------------------
@dataclass(frozen=True)
class Answer:
    """One product's generated answer beside its truth: what predict writes, evaluation scores and
    training's prediction CSVs hold.

    Args:
        product_id: the catalogue's id of the product.
        image_paths: its photo(s), as the dataset read them.
        target: the answer the model should give (the task's answer stating the truth).
        prediction: the answer it generated.
        parsed: field name -> the typed value read back from `prediction` (`TaskSpec.parse`; None where
            it cannot be read).
        truth: field name -> the catalogue's typed value.
    """

    product_id: str
    image_paths: tuple[str, ...]
    target: str
    prediction: str
    parsed: Mapping[str, FieldValue]
    truth: Mapping[str, FieldValue]

    def row(self, task: TaskSpec) -> dict:
        """The prediction row (`prediction_columns(task)`): the photos, then per field its parsed and true value
        and its check (a number's signed error, a category's or text's match)."""
        return prediction_row(task, self.product_id, PHOTO_SEPARATOR.join(map(str, self.image_paths)), self.target,
                              self.prediction, self.parsed, self.truth)


def answered(meta: Mapping[str, Any], predictions: list[str], task: TaskSpec) -> list[tuple[int, Answer]]:
    """(row in the batch, its Answer) for every supervised row of a collated batch's `meta`
    (phi3v.data.collate.BatchMeta) and the answers generated for it; unreadable images and the padding
    repeats of a distributed sampler get none."""
    return [
        (i, Answer(meta["product_id"][i], tuple(meta["image_paths"][i]), meta["target"][i], prediction,
                   task.parse(prediction), meta["truth"][i]))
        for i, prediction in enumerate(predictions) if meta["supervised"][i]
    ]


def prediction_columns(task: TaskSpec) -> tuple[str, ...]:
    """The columns of a prediction row: `ANSWER_COLUMNS`, then for each field `parsed_<f>`, `true_<f>` and
    `<f>_error_pct` (numbers: signed, 100 * (parsed - true) / true) or `<f>_match` (category and text)."""
    return (*ANSWER_COLUMNS, *prediction_column_names(task))


def prediction_row(
    task: TaskSpec, product_id: str, image_path: str | os.PathLike, target: str, prediction: str,
    parsed: Mapping[str, FieldValue], truth: Mapping[str, FieldValue],
) -> dict:
    """One product's answer and each field's parsed and true value and check (`prediction_columns`, in order)."""
    answer = {"product_id": product_id, "image_path": str(image_path), "target": target, "prediction": prediction}
    return {**answer, **field_columns(task, truth, parsed)}


def photo_paths(row: Mapping[str, Any]) -> list[str]:
    """The photos of a prediction row, in order (its `image_path`, split at `PHOTO_SEPARATOR`)."""
    return str(row["image_path"]).split(PHOTO_SEPARATOR)


def write_predictions(rows: Iterable[dict], out: str | os.PathLike, task: TaskSpec) -> int:
    """Write prediction rows of `task` as JSON lines or CSV (by `out`'s suffix), atomically: an interrupted or
    failing write leaves no file. Returns the number of rows."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    count = 0
    with atomic_write(out, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=prediction_columns(task)) if out.suffix.lower() == ".csv" else None
        if writer is not None:
            writer.writeheader()
        for row in rows:
            if writer is not None:
                writer.writerow(row)
            else:
                handle.write(json.dumps(row) + "\n")
            count += 1
    return count
