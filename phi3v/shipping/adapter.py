"""Shipping a fine-tune: writing the PEFT adapter (or full model) with everything needed to rebuild it,
checking that every trained tensor was written, merging and copying exports. Loading an export for
inference (and its layout: adapter, model_spec.json, prompt.json, processor files) is phi3v.inference.

Exports are written into a hidden sibling directory and renamed into place, so a crash never leaves
a half-written export where a loader would find it. The published directory and its files get the modes
the user's umask gives new ones (0755/0644 under the usual 022), so a server running as another user can
read them (tempfile's staging directory is 0700 and transformers writes model.safetensors 0600).
Every export carries a model card (README.md, shipping/model_card.py).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
import uuid
from dataclasses import replace
from pathlib import Path

import torch
from peft import PeftModel
from peft.tuners.lora import LoraLayer
from peft.utils import ModulesToSaveWrapper
from safetensors import safe_open

from phi3v.inference import ADAPTER_WEIGHTS, PROMPT_FILE, load_for_inference
from phi3v.modeling import Phi3VForCausalLM, Phi3VProcessor
from phi3v.modeling.model_spec import SPEC_FILE, ModelSpec
from phi3v.shipping.model_card import CardFacts, RunResults, write_model_card
from phi3v.shipping.snapshot_files import carry_snapshot_files, loads_with_remote_code
from phi3v.task import TaskSpec, task_record

log = logging.getLogger(__name__)

ADAPTER_DIR = "adapter"  # the export's name inside a run directory
# Prefixes wrappers add to module names (FSDP1, activation checkpointing, torch.compile); PEFT's
# saved keys never carry them, so expected keys are computed without them.
WRAPPER_PARTS = ("_fsdp_wrapped_module.", "_checkpoint_wrapped_module.", "_orig_mod.")


# ---- writing ---------------------------------------------------------------------------------
def export_adapter(
    model: PeftModel | Phi3VForCausalLM,
    processor: Phi3VProcessor,
    spec: ModelSpec,
    task: TaskSpec,
    out_dir: str | os.PathLike,
    state_dict: dict[str, torch.Tensor] | None = None,
    results: RunResults | None = None,
) -> Path:
    """Write the adapter (or, for a full fine-tune, the whole model) and its companions to `out_dir`.

    `state_dict`: whole tensors to save instead of the model's own, needed when the model is sharded
    (FSDP): see sharding.gathered_adapter_state, which every rank must call before rank 0 exports.
    `results`: the run's data and metrics of these weights, for the model card (and metrics.json).

    Raises RuntimeError when the written weights are empty or lack a trained tensor (a PEFT save
    under some FSDP wrappings silently writes an empty dict; an empty adapter is never shipped).
    """
    out_dir = Path(out_dir)
    with _staging(out_dir) as staging:
        if isinstance(model, PeftModel):
            # phi3v never resizes the vocabulary, so PEFT's "auto" check (which looks the base's config.json
            # up on the hub by its name) has nothing to find; trained embeddings are modules_to_save anyway.
            model.save_pretrained(staging, state_dict=state_dict, save_embedding_layers=False)
        else:
            model.save_pretrained(staging, state_dict=state_dict)
        if isinstance(model, PeftModel):
            check_adapter_file(staging / ADAPTER_WEIGHTS, adapter_keys(model))
        else:
            check_full_model(staging, {_clean(name) for name, _ in model.named_parameters()})
        _write_companions(staging, processor, spec, task)
        weights = "adapter" if isinstance(model, PeftModel) else "full"
        write_model_card(staging, CardFacts(spec, task, weights, results), out_dir)  # over PEFT's template card
    log.info("exported %s to %s", "adapter" if weights == "adapter" else "full model", out_dir)
    return out_dir


def merge_adapter(adapter_dir: str | os.PathLike, out_dir: str | os.PathLike) -> Path:
    """Fold the LoRA deltas into the base weights and save a plain Phi-3-V checkpoint.

    The result has the original key layout (exactly the keys of an unadapted Phi3VForCausalLM),
    loads with `Phi3VForCausalLM.from_pretrained(out_dir)` and needs neither PEFT nor the base.
    Merging happens in the spec's dtype: PEFT computes the delta in float32 on CPU and rounds once.
    An adapter trained on a quantized base (QLoRA) is merged into the UNQUANTIZED base in that dtype:
    folding it into nf4/int8 weights would round the delta away, and the merged checkpoint then needs
    no bitsandbytes (its model_spec.json says quantization null).
    """
    out_dir, base = Path(out_dir), ModelSpec.load(adapter_dir)
    progress = _Progress(f"merge {adapter_dir} -> {out_dir}")  # a 4B model takes minutes: say where it is
    model, processor, task = load_for_inference(adapter_dir, quantized=False)
    progress.step(f"loaded the base ({base.name_or_path}, {_millions(model):,.0f}M parameters) and the export")
    merged = model.merge_and_unload() if isinstance(model, PeftModel) else model
    progress.step("folded the LoRA deltas into the base weights")
    _set_generation_ids(merged, processor)
    # name_or_path points at the merged export itself, so predict/load_for_inference rebuild from it.
    spec = replace(base.for_inference(), name_or_path=str(out_dir.resolve()), quantization=None)
    with _staging(out_dir) as staging:
        merged.save_pretrained(staging)
        size = sum(f.stat().st_size for f in staging.glob("*.safetensors"))
        progress.step(f"saved the weights ({size / 1e9:.2f} GB)")
        check_full_model(staging, original_keys(merged), exact=True)
        _write_companions(staging, processor, spec, task)
        carry_snapshot_files(base, staging)  # auto_map, code and tokenizer files of the user's download, if any
        facts = CardFacts(base, task, "merged", RunResults.load(adapter_dir), loads_with_remote_code(staging))
        write_model_card(staging, facts, out_dir)
        progress.step("checked every tensor and wrote the processor and loader files")
    log.info("merged %s into %s", adapter_dir, out_dir)
    return out_dir


def merge_note(adapter_dir: str | os.PathLike) -> str | None:
    """What a user must know about merging this export: set for adapters trained on a quantized base."""
    spec = ModelSpec.load(adapter_dir)
    if not spec.quantization:
        return None
    return (
        f"the adapter was trained on a {spec.quantization}-quantized base; it is merged into the unquantized "
        f"{spec.dtype} base weights (re-quantize at load time with model.spec.quantization if needed)"
    )


class _Progress:
    """Log lines `<what>: [i] <stage> (seconds)` for the slow stages of a merge."""

    def __init__(self, what: str):
        self.what, self.count, self.last = what, 0, time.perf_counter()
        log.info("%s: started", what)

    def step(self, stage: str) -> None:
        now, self.count = time.perf_counter(), self.count + 1
        log.info("%s: [%d] %s (%.1f s)", self.what, self.count, stage, now - self.last)
        self.last = now


def _millions(model) -> float:
    return sum(p.numel() for p in model.parameters()) / 1e6


def copy_export(adapter_dir: str | os.PathLike, out_dir: str | os.PathLike) -> Path:
    """Validate an export by loading it (and re-checking an adapter's tensors), then copy it to `out_dir`."""
    model, _, _ = load_for_inference(adapter_dir)
    if isinstance(model, PeftModel):
        check_adapter_file(Path(adapter_dir) / ADAPTER_WEIGHTS, adapter_keys(model))
    out_dir = Path(out_dir)
    if out_dir.resolve() == Path(adapter_dir).resolve():
        return out_dir
    with _staging(out_dir) as staging:
        shutil.copytree(adapter_dir, staging, dirs_exist_ok=True)
    return out_dir


def _write_companions(directory: Path, processor: Phi3VProcessor, spec: ModelSpec, task: TaskSpec) -> None:
    spec.save(directory)
    (directory / PROMPT_FILE).write_text(json.dumps(task_record(task), indent=1) + "\n")  # the task it learned
    processor.save_pretrained(directory)


def _set_generation_ids(model: Phi3VForCausalLM, processor: Phi3VProcessor) -> None:
    """Make a plain `model.generate(...)` of the export stop at `<|end|>` and pad like the processor."""
    config = model.generation_config
    eos = config.eos_token_id
    eos = [] if eos is None else ([eos] if isinstance(eos, int) else list(eos))
    config.eos_token_id = list(dict.fromkeys([*eos, processor.end_token_id]))
    config.pad_token_id = processor.pad_token_id


class _staging:
    """Context manager: a hidden temp dir next to `target`, renamed to `target` on success, removed on error.

    An existing export at `target` is swapped out and deleted only after the new one is in place.
    A non-empty directory that is not a phi3v export is never replaced (it may be user data).
    """

    def __init__(self, target: Path):
        self.target = target

    def __enter__(self) -> Path:
        if self.target.exists() and not self.target.is_dir():
            raise FileExistsError(f"{self.target} is a file; the export needs a directory")
        if self.target.exists() and any(self.target.iterdir()) and not (self.target / SPEC_FILE).is_file():
            raise FileExistsError(f"{self.target} exists and is not a phi3v export; choose an empty or new directory")
        self.target.parent.mkdir(parents=True, exist_ok=True)
        self.path = self.target.parent / f".{self.target.name}.{uuid.uuid4().hex}"
        self.path.mkdir()  # mode 0777 less the umask (tempfile.mkdtemp's would be 0700)
        return self.path

    def __exit__(self, kind, error, trace) -> None:
        if kind is not None:
            shutil.rmtree(self.path, ignore_errors=True)
            return
        _umask_modes(self.path)
        old = None
        if self.target.exists():
            old = self.target.with_name(f"{self.path.name}.old")
            os.replace(self.target, old)
        os.replace(self.path, self.target)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)


def _umask_modes(directory: Path) -> None:
    """Give everything under `directory` the mode a new file or directory gets from the umask: the directory's
    own (made with 0777 less the umask), without the execute bits for files."""
    mode = directory.stat().st_mode & 0o777
    for path in directory.rglob("*"):
        path.chmod(mode if path.is_dir() else mode & 0o666)


# ---- checking --------------------------------------------------------------------------------
def _clean(name: str) -> str:
    for part in WRAPPER_PARTS:
        name = name.replace(part, "")
    return name


def adapter_keys(model: PeftModel) -> set[str]:
    """The keys PEFT must save for the active adapter: every LoRA A/B tensor of every adapted layer
    and every tensor of the modules trained whole (`modules_to_save`), in PEFT's file naming.
    Computed from the module tree, not from a state dict, so an empty gathered state cannot hide."""
    adapter = model.active_adapter
    keys = set()
    for name, module in model.named_modules():
        name = _clean(name)
        if isinstance(module, LoraLayer) and adapter in module.lora_A:
            for part in ("lora_A", "lora_B"):
                keys |= {f"{name}.{part}.{key}" for key in getattr(module, part)[adapter].state_dict()}
        elif isinstance(module, ModulesToSaveWrapper):
            keys |= {f"{name}.{key}" for key in module.original_module.state_dict()}
    return keys


def saved_shapes(files: list[Path]) -> dict[str, tuple[int, ...]]:
    """Key -> shape of every tensor in safetensors files, read from headers only (no tensor data)."""
    shapes = {}
    for file in files:
        with safe_open(str(file), "pt") as handle:
            for key in handle.keys():
                shapes[key] = tuple(handle.get_slice(key).get_shape())
    return shapes


def _require(shapes: dict[str, tuple[int, ...]], expected: set[str], what: str, exact: bool = False) -> None:
    if not shapes:
        raise RuntimeError(
            f"{what} holds no tensors: refusing to ship an empty export. Under FSDP gather a full state "
            "dict on rank 0 (or unshard) before exporting"
        )
    problems = []
    missing = sorted(expected - set(shapes))
    if missing:
        problems.append(f"{len(missing)} expected tensors are missing (e.g. {missing[:3]})")
    extra = sorted(set(shapes) - expected) if exact else []
    if extra:
        problems.append(f"{len(extra)} unexpected tensors (e.g. {extra[:3]})")
    hollow = sorted(key for key, shape in shapes.items() if 0 in shape)
    if hollow:
        problems.append(f"{len(hollow)} tensors have no elements, i.e. shards not gathered (e.g. {hollow[:3]})")
    if problems:
        raise RuntimeError(f"{what} is not a complete export: " + "; ".join(problems))


def check_adapter_file(path: str | os.PathLike, expected: set[str]) -> None:
    """Raise RuntimeError unless the adapter file holds every expected tensor, none of them empty."""
    path = Path(path)
    if not path.is_file():
        raise RuntimeError(f"{path} was not written (PEFT saved no adapter weights)")
    _require(saved_shapes([path]), expected, str(path))


def check_full_model(directory: Path, expected: set[str], exact: bool = False) -> None:
    """The same check for a full checkpoint (single file or shards of an index)."""
    files = sorted(directory.glob("model*.safetensors"))
    _require(saved_shapes(files), expected, f"the checkpoint in {directory}", exact=exact)


def original_keys(model: Phi3VForCausalLM) -> set[str]:
    """The state-dict keys of an unadapted model with this config, built on the meta device (no memory)."""
    with torch.device("meta"):
        fresh = Phi3VForCausalLM(model.config)
    ignored = fresh._keys_to_ignore_on_save or []
    return {key for key in fresh.state_dict() if key not in ignored}
