"""Tier 2: a merged export laid out like the base snapshot it came from (auto_map, code files, generation
config, chat template), so tools that load Microsoft's release (vLLM, lmdeploy, trust_remote_code) load it.

The snapshot is the tiny model saved with save_pretrained plus what a downloaded Phi-3-V snapshot adds:
auto_map entries and placeholder code files (written here; no remote code is stored or run).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch
from PIL import Image

from phi3v.inference import load_for_inference
from phi3v.modeling.model_spec import ModelSpec, load_base_model, load_processor
from phi3v.shipping.adapter import export_adapter, merge_adapter
from phi3v.shipping.snapshot_files import missing_auto_map_modules
from phi3v.task import PromptTemplate
from phi3v.training.lora import LoraSpec, apply_lora

pytestmark = pytest.mark.unit

CODE_FILES = ("configuration_phi3_v.py", "modeling_phi3_v.py", "image_processing_phi3_v.py", "processing_phi3_v.py")
MODEL_AUTO_MAP = {"AutoConfig": "configuration_phi3_v.Phi3VConfig",
                  "AutoModelForCausalLM": "modeling_phi3_v.Phi3VForCausalLM"}
PROCESSOR_AUTO_MAP = {"AutoProcessor": "processing_phi3_v.Phi3VProcessor",
                      "AutoImageProcessor": "image_processing_phi3_v.Phi3VImageProcessor"}
CHAT_TEMPLATE = "{% for message in messages %}<|{{ message['role'] }}|>\n{{ message['content'] }}<|end|>\n{% endfor %}"


def edit_json(path: Path, **values) -> None:
    path.write_text(json.dumps({**json.loads(path.read_text()), **values}, indent=2))


def fake_snapshot(directory: Path) -> Path:
    """The tiny model saved as a downloaded snapshot, with Phi-3-V's loader pointers and code files."""
    spec = ModelSpec()
    load_base_model(spec).save_pretrained(directory)
    load_processor(spec).save_pretrained(directory)
    for name in CODE_FILES:
        (directory / name).write_text(f"# placeholder for the snapshot's {name}\nVALUE = {len(name)}\n")
    edit_json(directory / "config.json", auto_map=MODEL_AUTO_MAP)
    edit_json(directory / "preprocessor_config.json", auto_map=PROCESSOR_AUTO_MAP)
    edit_json(directory / "tokenizer_config.json", chat_template=CHAT_TEMPLATE)
    edit_json(directory / "generation_config.json", max_length=4096, _from_model_config=False)
    return directory


def adapter_on(base: str, out: Path) -> Path:
    spec = ModelSpec(name_or_path=base)
    model = apply_lora(load_base_model(spec), LoraSpec(r=4))
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.fill_(0.01)
    return export_adapter(model.eval(), load_processor(spec), spec, PromptTemplate(), out)


@pytest.fixture(scope="module")
def snapshot_export(tmp_path_factory):
    root = tmp_path_factory.mktemp("layout")
    snapshot = fake_snapshot(root / "snapshot")
    adapter = adapter_on(str(snapshot), root / "adapter")
    return snapshot, adapter, merge_adapter(adapter, root / "merged")


def read(path: Path) -> dict:
    return json.loads(path.read_text())


def test_merged_export_carries_the_snapshot_code_and_auto_map(snapshot_export):
    snapshot, _, merged = snapshot_export
    for name in CODE_FILES:
        assert (merged / name).read_bytes() == (snapshot / name).read_bytes()
    assert sorted(p.name for p in merged.glob("*.py")) == sorted(CODE_FILES)
    assert read(merged / "config.json")["auto_map"] == MODEL_AUTO_MAP
    assert read(merged / "preprocessor_config.json")["auto_map"] == PROCESSOR_AUTO_MAP
    assert missing_auto_map_modules(merged) == []  # every auto_map entry points at a file beside it
    assert read(merged / "tokenizer_config.json")["chat_template"] == CHAT_TEMPLATE
    generation = read(merged / "generation_config.json")
    processor = load_processor(ModelSpec())
    assert generation["max_length"] == 4096  # the snapshot's own setting, kept
    assert processor.end_token_id in generation["eos_token_id"] and generation["pad_token_id"] == processor.pad_token_id


def test_auto_map_entries_of_other_repos_and_empty_slots_need_no_file(tmp_path):
    auto_map = {"AutoConfig": "configuration_phi3_v.Phi3VConfig", "AutoModel": "other/repo--modeling_x.M",
                "AutoTokenizer": [None, "tokenization_y.FastTokenizer"]}
    (tmp_path / "config.json").write_text(json.dumps({"auto_map": auto_map}))
    (tmp_path / "configuration_phi3_v.py").write_text("")
    assert missing_auto_map_modules(tmp_path) == ["tokenization_y.py"]


def test_merged_export_with_loader_files_still_loads_and_answers_like_the_adapter(snapshot_export):
    _, adapter, merged = snapshot_export
    model, processor, _ = load_for_inference(adapter)
    plain, _, _ = load_for_inference(merged)
    batch = processor(PromptTemplate().prompt(), [Image.new("RGB", (200, 150), "navy")])
    with torch.no_grad():
        torch.testing.assert_close(plain(**batch).logits, model(**batch).logits, atol=1e-5, rtol=1e-5)


def test_merge_logs_each_stage_and_what_a_preset_base_leaves_out(tmp_path, caplog):
    adapter = adapter_on("tiny", tmp_path / "adapter")
    with caplog.at_level(logging.INFO, logger="phi3v"):
        merged = merge_adapter(adapter, tmp_path / "merged")
    assert not list(merged.glob("*.py")) and "auto_map" not in read(merged / "config.json")
    assert "chat_template" not in read(merged / "tokenizer_config.json")
    assert "leaves out auto_map, the snapshot's code files (*.py)" in caplog.text
    assert "the base is the preset tiny" in caplog.text
    for stage in ("[1] loaded the base (tiny", "[2] folded the LoRA deltas", "[3] saved the weights",
                  "[4] checked every tensor"):
        assert stage in caplog.text
