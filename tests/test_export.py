"""Tier 2/3: exporting a LoRA adapter, loading it for inference, merging it, and the export CLI.

The adapter is the tiny preset with LoRA r=8 on the decoder plus the image projector trained whole;
its LoRA B matrices (zero at init) and the projector copy are perturbed with a seeded generator so
the adapter visibly changes the model's outputs.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from peft import PeftModel
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from phi3v.inference import ADAPTER_WEIGHTS, load_for_inference, load_task
from phi3v.modeling import Phi3VForCausalLM, Phi3VProcessor, tiny_config
from phi3v.modeling.model_spec import ModelSpec, load_base_model, load_processor
from phi3v.shipping.adapter import (
    adapter_keys,
    check_adapter_file,
    copy_export,
    export_adapter,
    merge_adapter,
)
from phi3v.task import DEFAULT_FIELDS, FieldSpec, TaskSpec, task_record
from phi3v.training.lora import LoraSpec, apply_lora

pytestmark = [pytest.mark.unit, pytest.mark.usefixtures("one_thread")]

REPO = Path(__file__).resolve().parents[1]
# not the default task (the price formatted): the export must carry it
TEMPLATE = TaskSpec((*DEFAULT_FIELDS[:2], FieldSpec("price", "full_price", "number", "{:,.2f}", "Full Price")))
GENERATE = dict(max_new_tokens=6, do_sample=False)
ONE_THREAD = {**os.environ, "OMP_NUM_THREADS": "1"}  # see `one_thread` (conftest.py)


def adapted_model(spec: ModelSpec, seed: int = 1) -> PeftModel:
    """The tiny model with a LoRA adapter whose trained tensors are random (so it changes outputs)."""
    model = apply_lora(load_base_model(spec), LoraSpec(r=8, train_projector=True))
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_B" in name or "modules_to_save" in name:
                parameter.add_(torch.randn(parameter.shape, generator=generator) * 0.05)
    return model.eval()


def build_adapter(out_dir: Path) -> tuple[PeftModel, Path]:
    spec = ModelSpec()
    model = adapted_model(spec)
    return model, export_adapter(model, load_processor(spec), spec, TEMPLATE, out_dir)


def product_image(color: str = "red", size: tuple[int, int] = (300, 200)) -> Image.Image:
    image = Image.new("RGB", size, color)
    image.paste(Image.new("RGB", (size[0] // 3, size[1] // 3), "white"), (10, 10))
    return image


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> tuple[PeftModel, Path]:
    return build_adapter(tmp_path_factory.mktemp("export") / "adapter")


@pytest.fixture(scope="module")
def batch(exported):
    """Two products, left padded as for generation; 1 crop per image keeps the sequences short (CPU time)."""
    processor = Phi3VProcessor.from_pretrained(exported[1], num_crops=1, padding_side="left")
    images = [product_image("red"), product_image("navy", (180, 420))]
    return processor([TEMPLATE.prompt()] * 2, images)


def logits(model, batch) -> torch.Tensor:
    with torch.no_grad():
        return model(**batch).logits


def greedy(model, batch) -> torch.Tensor:
    with torch.no_grad():
        return model.generate(**batch, **GENERATE, eos_token_id=None, pad_token_id=0)


def file_keys(path: Path) -> set[str]:
    with safe_open(str(path), "pt") as handle:
        return set(handle.keys())


def peft_file_name(parameter_name: str) -> str:
    """PEFT's saved name of a trainable parameter: the adapter name ("default") dropped."""
    return parameter_name.replace(".default.", ".").replace(".modules_to_save.", ".")


# ---- the adapter -----------------------------------------------------------------------------
def test_adapter_holds_exactly_the_trained_tensors(exported):
    model, out = exported
    names = {"adapter_config.json", ADAPTER_WEIGHTS, "model_spec.json", "prompt.json", "tokenizer.json",
             "preprocessor_config.json"}
    assert names <= {p.name for p in out.iterdir()}
    assert not list(out.parent.glob(".adapter.*"))  # no staging directory left behind
    trained = {peft_file_name(n): p for n, p in model.named_parameters() if p.requires_grad}
    saved = load_file(str(out / ADAPTER_WEIGHTS))
    assert set(saved) == set(trained) == adapter_keys(model)
    layers = tiny_config().num_hidden_layers
    assert len(saved) == layers * 4 * 2 + 4  # A and B of qkv/o/gate_up/down per layer + projector MLP
    assert sum("img_projection" in key for key in saved) == 4
    for key, tensor in saved.items():
        assert torch.equal(tensor, trained[key].detach()), key
    assert ModelSpec.load(out) == ModelSpec()
    assert json.loads((out / "prompt.json").read_text()) == task_record(TEMPLATE)
    assert json.loads((out / "prompt.json").read_text())["fields"][2]["format"] == "{:,.2f}"


def test_an_old_exports_prompt_json_still_loads(tmp_path, caplog):
    """Exports written before the fields were configurable hold {question, answer, price_format}: read as the
    seed's three fields with that price format, they ask and parse exactly as before."""
    (tmp_path / "prompt.json").write_text(json.dumps({"question": "<|image_1|>What is shown in this image?",
        "answer": "Product: {title}, Category: {category}, Full Price: {price}", "price_format": "{:,.2f}"}))
    task = load_task(tmp_path)
    assert task == TEMPLATE
    assert task.answer_for({"title": "T", "category": "C", "price": 1250.0}) == (
        "Product: T, Category: C, Full Price: 1,250.00")
    assert load_task(tmp_path / "elsewhere") == TaskSpec() and "using the default task" in caplog.text


@pytest.mark.parametrize("num_crops", [None, 1])
def test_an_exports_num_crops_is_the_processor_files_own(tmp_path, num_crops):
    """model_spec.json says null (the base's own, as the processor files hold it) or the number the
    processor was built with; inference reads the processor files, so it crops as training did."""
    spec = ModelSpec(num_crops=num_crops)
    processor = load_processor(spec)
    out = export_adapter(adapted_model(spec), processor, spec, TEMPLATE, tmp_path / "adapter")
    recorded = json.loads((out / "model_spec.json").read_text())["num_crops"]
    files = json.loads((out / "preprocessor_config.json").read_text())["num_crops"]
    assert recorded == num_crops and files == processor.image_processor.num_crops == (num_crops or 4)  # tiny: 4
    assert load_for_inference(out)[1].image_processor.num_crops == files


def test_load_for_inference_reproduces_logits_and_greedy_tokens(exported, batch):
    model, out = exported
    loaded, processor, template = load_for_inference(out)
    assert isinstance(loaded, PeftModel) and not loaded.training
    assert template == TEMPLATE and processor.padding_side == "left"
    assert torch.equal(logits(loaded, batch), logits(model, batch))
    assert torch.equal(greedy(loaded, batch), greedy(model, batch))
    # ... and the adapter matters: the bare base model answers differently.
    assert not torch.allclose(logits(load_base_model(ModelSpec()).eval(), batch), logits(model, batch), atol=1e-3)


def test_peft_loads_the_adapter_directly(exported, batch):
    model, out = exported
    loaded = PeftModel.from_pretrained(load_base_model(ModelSpec()), out).eval()
    assert torch.equal(logits(loaded, batch), logits(model, batch))


def test_full_finetune_exports_the_whole_model(tmp_path, batch):
    spec = ModelSpec(seed=3)
    model = apply_lora(load_base_model(spec), LoraSpec(enabled=False)).eval()
    out = export_adapter(model, load_processor(spec), spec, TEMPLATE, tmp_path / "full")
    assert (out / "model.safetensors").is_file() and not (out / ADAPTER_WEIGHTS).exists()
    loaded, _, template = load_for_inference(out)
    assert isinstance(loaded, Phi3VForCausalLM) and template == TEMPLATE
    assert torch.equal(logits(loaded, batch), logits(model, batch))


# ---- never an empty or partial adapter --------------------------------------------------------
def test_export_refuses_an_adapter_saved_without_tensors(tmp_path, monkeypatch):
    spec = ModelSpec()
    model = adapted_model(spec)

    def save_nothing(directory, **kwargs):  # what PEFT does under some FSDP wrappings
        Path(directory, "adapter_config.json").write_text("{}")
        save_file({}, str(Path(directory, ADAPTER_WEIGHTS)))

    monkeypatch.setattr(model, "save_pretrained", save_nothing)
    with pytest.raises(RuntimeError, match="no tensors"):
        export_adapter(model, load_processor(spec), spec, TEMPLATE, tmp_path / "adapter")
    assert list(tmp_path.iterdir()) == []  # nothing published, staging removed


def test_adapter_check_names_missing_and_hollow_tensors(exported, tmp_path):
    model, out = exported
    saved = load_file(str(out / ADAPTER_WEIGHTS))
    lora_key = next(key for key in saved if "lora_A" in key)
    save_file({k: v for k, v in saved.items() if k != lora_key}, str(tmp_path / "missing.safetensors"))
    with pytest.raises(RuntimeError, match="1 expected tensors are missing"):
        check_adapter_file(tmp_path / "missing.safetensors", adapter_keys(model))
    save_file({**saved, lora_key: torch.zeros(0)}, str(tmp_path / "hollow.safetensors"))
    with pytest.raises(RuntimeError, match="no elements"):
        check_adapter_file(tmp_path / "hollow.safetensors", adapter_keys(model))


def test_export_replaces_an_old_export_but_not_other_directories(exported, tmp_path):
    model, _ = exported
    spec = ModelSpec()
    for _ in range(2):
        export_adapter(model, load_processor(spec), spec, TEMPLATE, tmp_path / "adapter")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter"]
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="not a phi3v export"):
        export_adapter(model, load_processor(spec), spec, TEMPLATE, tmp_path / "mine")
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"


def test_copy_export_validates_and_copies(exported, tmp_path):
    _, out = exported
    copied = copy_export(out, tmp_path / "copy")
    assert load_file(str(copied / ADAPTER_WEIGHTS)).keys() == load_file(str(out / ADAPTER_WEIGHTS)).keys()
    assert (copied / "prompt.json").read_text() == (out / "prompt.json").read_text()


# ---- merging ---------------------------------------------------------------------------------
def test_merge_writes_the_original_layout_with_the_adapted_outputs(exported, batch, tmp_path):
    model, out = exported
    merged_dir = merge_adapter(out, tmp_path / "merged")
    keys = file_keys(merged_dir / "model.safetensors")
    assert keys == set(Phi3VForCausalLM(tiny_config()).state_dict())
    assert any(k.startswith("model.vision_embed_tokens.img_processor.vision_model.") for k in keys)
    assert not any("lora_" in k or "base_model" in k or "modules_to_save" in k for k in keys)
    merged = Phi3VForCausalLM.from_pretrained(merged_dir).eval()
    torch.testing.assert_close(logits(merged, batch), logits(model, batch), atol=1e-5, rtol=0)
    spec = ModelSpec.load(merged_dir)
    assert Path(spec.name_or_path) == merged_dir.resolve()
    processor = load_processor(spec)  # the spec alone rebuilds the processor from the merged export
    assert processor.end_token_id in merged.generation_config.eos_token_id
    loaded, _, template = load_for_inference(merged_dir)
    assert isinstance(loaded, Phi3VForCausalLM) and template == TEMPLATE
    assert torch.equal(logits(loaded, batch), logits(merged, batch))


# ---- the command line ------------------------------------------------------------------------
def run_export(*overrides: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "phi3v.export", *overrides],
        cwd=REPO, capture_output=True, text=True, timeout=300, env=ONE_THREAD,
    )


@pytest.mark.slow
@pytest.mark.e2e
def test_export_cli_merges(exported, tmp_path):
    _, out = exported
    result = run_export(f"adapter={out}", "merge=true", f"out={tmp_path / 'merged'}")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "model.safetensors" in result.stdout and str(tmp_path / "merged") in result.stdout
    assert "lora_A" not in " ".join(file_keys(tmp_path / "merged" / "model.safetensors"))


@pytest.mark.slow
@pytest.mark.e2e
def test_export_cli_missing_adapter_is_one_clear_line(tmp_path):
    result = run_export(f"adapter={tmp_path / 'nope'}", f"out={tmp_path / 'out'}")
    assert result.returncode == 1
    assert result.stderr.strip() == f"error: adapter={tmp_path / 'nope'}: no such directory"
    assert "Traceback" not in result.stderr + result.stdout
