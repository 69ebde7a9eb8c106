"""The model card (`README.md`) of an export, in the Hub's layout: a YAML header (base_model, library_name,
pipeline_tag, tags, datasets: what the Hub indexes) and a page saying what the model does, what it was trained
on, the prompt and the fields its answer states (name, column, type, format), the run's metrics (a table per
field) and how to load it.

The header is written by huggingface_hub's `ModelCardData` (the Hub's own schema; None values are dropped)
rather than by hand. The metrics come from `metrics.json` (`RunResults`): a training run writes it into its
adapter with the scores of the exported weights, and a merge carries it over; an export without one (written
outside a run, or by an older phi3v) says "no metrics recorded".
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path

from huggingface_hub import ModelCard, ModelCardData

from phi3v.modeling.model_spec import ModelSpec
from phi3v.shipping.artifacts import json_safe
from phi3v.task import TaskSpec
from phi3v.task.scoring import METRICS

CARD_FILE = "README.md"
RESULTS_FILE = "metrics.json"
WEIGHTS = {  # what the export's weights are -> (title, library the Hub files it under)
    "adapter": ("LoRA adapter", "peft"),
    "full": ("fully fine-tuned model", "transformers"),
    "merged": ("merged model (LoRA folded into the base)", "transformers"),
}
TAGS = ["phi3v", "phi3_v", "vision", "lora", "product-attributes"]
TABLE_SUFFIXES = (".parquet", ".csv", ".jsonl", ".json")  # data.source values that are local tables


@dataclass(frozen=True)
class RunResults:
    """What a training run measured for the weights it exported.

    Args:
        dataset: the catalogue, as `data.source` named it ("synthetic", a hub id or a local table).
        scores: split -> metric -> value of the run's last evaluation of that split (None: not a number).
    """

    dataset: str
    scores: dict[str, dict[str, float | None]]

    def save(self, directory: str | os.PathLike) -> None:
        content = json_safe(asdict(self))  # a metric with no parsed price is NaN, which JSON has no word for
        (Path(directory) / RESULTS_FILE).write_text(json.dumps(content, indent=1) + "\n")

    @classmethod
    def load(cls, directory: str | os.PathLike) -> RunResults | None:
        path = Path(directory) / RESULTS_FILE
        return cls(**json.loads(path.read_text())) if path.is_file() else None


@dataclass(frozen=True)
class CardFacts:
    """What a card says. `base` is the base model the weights came from (not the export itself);
    `remote_code`: the export carries the base snapshot's auto_map and code files (trust_remote_code, vLLM)."""

    base: ModelSpec
    task: TaskSpec
    weights: str  # a key of WEIGHTS
    results: RunResults | None = None
    remote_code: bool = False

    def __post_init__(self) -> None:
        if self.weights not in WEIGHTS:
            raise ValueError(f"weights must be one of {sorted(WEIGHTS)}, got {self.weights!r}")


def write_model_card(directory: str | os.PathLike, facts: CardFacts, location: str | os.PathLike) -> Path:
    """Write `README.md` (replacing PEFT's template card) and, with results, `metrics.json` into `directory`;
    `location` is where the export will be found (its loading examples name it; `directory` may be a staging one)."""
    directory = Path(directory)
    if facts.results is not None:
        facts.results.save(directory)
    path = directory / CARD_FILE
    ModelCard(model_card(facts, str(location))).save(path)
    return path


def model_card(facts: CardFacts, location: str) -> str:
    """The card's text; `location` is the directory named in the loading examples."""
    title, library = WEIGHTS[facts.weights]
    dataset = facts.results.dataset if facts.results else None
    header = ModelCardData(
        base_model=hub_model_id(facts.base), library_name=library, pipeline_tag="image-text-to-text",
        tags=TAGS + (["peft"] if facts.weights == "adapter" else []),
        datasets=[dataset] if dataset and is_hub_dataset(dataset) else None,
    )
    sections = [
        f"---\n{header.to_yaml()}\n---\n",
        f"# Phi-3-Vision product reader: {title}\n",
        f"Fine-tuned from `{facts.base.name_or_path}` with phi3v to read a product photo and answer with its "
        f"{_spoken(facts.task.names)}.\n",
        "## Data\n",
        f"Trained on `{dataset}` (`data.source`).\n" if dataset else "The training data was not recorded.\n",
        "## Prompt\n",
        "The question (with the photo's place) and the answer format it was trained with (`prompt.json`):\n",
        f"```\n{facts.task.prompt()}{facts.task.answer}<|end|>\n```\n",
        fields_section(facts.task),
        "## Results\n",
        results_section(facts.results, facts.task),
        "## Use\n",
        *usage(facts, location),
    ]
    return "\n".join(sections)


def _spoken(names: tuple[str, ...]) -> str:
    """"price"; "title and price"; "title, category and price"."""
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} and {names[-1]}"


def fields_section(task: TaskSpec) -> str:
    """The fields the answer states, in order: name, catalogue column, type, format (None: as Python writes it)."""
    rows = ["| field | column | type | format |", "|---|---|---|---|"]
    for spec in task.fields:
        written = f"`{spec.format}`" if spec.format else "as Python writes it"
        rows.append(f"| {spec.name} | {spec.column} | {spec.type} | {written} |")
    return "The fields of the answer (parsed back and scored by type):\n\n" + "\n".join(rows) + "\n"


def results_section(results: RunResults | None, task: TaskSpec) -> str:
    """One metrics table per field of `task` (its `<field>_<metric>` keys), then one for the whole answer
    (`parse_rate`, `count` and any key of no field); rows of keys the run did not record are left out."""
    if results is None or not results.scores:
        return "No metrics recorded (the export was not written at the end of a phi3v training run that evaluated).\n"
    splits = list(results.scores)
    recorded = list(dict.fromkeys(key for split in splits for key in results.scores[split]))
    groups = {f"{spec.name} ({spec.type})": [f"{spec.name}_{metric}" for metric in METRICS[spec.type]]
              for spec in task.fields}
    grouped = {key for keys in groups.values() for key in keys}
    groups["whole answer"] = [key for key in recorded if key not in grouped]
    tables = []
    for title, keys in groups.items():
        keys = [key for key in keys if key in recorded]
        if keys:
            rows = [f"| metric | {' | '.join(splits)} |", "|---" * (len(splits) + 1) + "|"]
            rows += [f"| {key} | " + " | ".join(_cell(key, results.scores[s].get(key)) for s in splits) + " |"
                     for key in keys]
            tables.append(f"### {title}\n\n" + "\n".join(rows) + "\n")
    return (
        "Metrics of these weights on the run's held-out splits (its last evaluation of each). Number errors in "
        "percent (`<field>_mape` caps each at 100 and counts an unread value as 100), `<field>_mae` in the "
        "field's units, shares in 0..1.\n\n" + "\n".join(tables)
    )


def _cell(key: str, value: float | None) -> str:
    if value is None or not math.isfinite(value):  # NaN: e.g. the MAE of no parsed price
        return "n/a"
    return str(int(value)) if key == "count" else f"{value:.4g}"


def usage(facts: CardFacts, location: str) -> list[str]:
    """How to load the export: phi3v always; PEFT for an adapter; trust_remote_code and vLLM when it carries
    the base snapshot's code."""
    lines = [
        "With phi3v (`pip install -e .` in its repository):\n",
        f"```bash\npython -m phi3v.predict adapter={location} image=photo.jpg\n```\n",
        "```python\nfrom phi3v.inference import load_for_inference\n\n"
        f'model, processor, task = load_for_inference("{location}")\n```\n',
    ]
    if facts.weights == "adapter":
        lines.append(
            "Other tools load the merged model: `python -m phi3v.export adapter=<this dir> merge=true out=merged/` "
            "folds the LoRA into the base (laid out like the base snapshot when it is a local download).\n"
        )
        return lines
    if not facts.remote_code:
        lines.append(
            "This export has no `auto_map` or code files (its base was not a local snapshot with them), so it "
            "loads with phi3v only.\n"
        )
        return lines
    lines += [
        "With transformers' remote code (the base's `auto_map` and code files are beside the weights):\n",
        "```python\nfrom PIL import Image\nfrom transformers import AutoModelForCausalLM, AutoProcessor\n\n"
        f'model = AutoModelForCausalLM.from_pretrained("{location}", trust_remote_code=True, torch_dtype="auto",\n'
        '                                             _attn_implementation="eager")  # or flash_attention_2\n'
        f'processor = AutoProcessor.from_pretrained("{location}", trust_remote_code=True)\n'
        f'inputs = processor({facts.task.prompt()!r}, [Image.open("photo.jpg")], return_tensors="pt")\n'
        "answer = model.generate(**inputs, max_new_tokens=64)  # stops at <|end|> (generation_config.json)\n"
        'print(processor.batch_decode(answer[:, inputs["input_ids"].shape[1]:], skip_special_tokens=True)[0])\n'
        "```\n",
        "With vLLM:\n",
        f"```bash\nvllm serve {location} --trust-remote-code --max-model-len 4096\n```\n",
    ]
    return lines


def hub_model_id(spec: ModelSpec) -> str | None:
    """The base's hub id for `base_model`: a hub id as is, a snapshot in the HF cache
    (`.../models--org--name/snapshots/<revision>`) by its repository; None for presets and other directories."""
    if spec.is_preset:
        return None
    path = Path(spec.name_or_path).expanduser()
    if not path.exists():
        return spec.name_or_path
    parts = path.resolve().parts
    if len(parts) >= 3 and parts[-2] == "snapshots" and parts[-3].startswith("models--"):
        return parts[-3].removeprefix("models--").replace("--", "/", 1)
    return None


def is_hub_dataset(source: str) -> bool:
    """Whether `data.source` names a Hugging Face dataset ("org/name"), not a local file or the synthetic one."""
    parts = source.split("/")
    return (
        len(parts) == 2 and all(parts) and not source.startswith((".", "~"))
        and not source.lower().endswith(TABLE_SUFFIXES) and not Path(source).exists()
    )
