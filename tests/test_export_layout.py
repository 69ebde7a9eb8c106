"""Tier 2: a merged export laid out like the base snapshot it came from (auto_map, code files, the base's own
tokenizer files, config keys, generation config), so tools that load Microsoft's release (vLLM, lmdeploy,
trust_remote_code under transformers 4.x) load it; world-readable files; a model card.

The snapshot is a downloaded release in miniature: the tiny model with the real 32,064-token vocabulary, the
release's own tokenizer files and preprocessor config (../shared/golden/real), a config.json in the release's
spelling (torch_dtype, auto_map, transformers 4.38), placeholder code files (written here; no remote code is
stored or run), in the HF cache's layout so the card can name the hub id.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
from golden_data import REAL_PHI3V
from huggingface_hub import ModelCard
from PIL import Image

from phi3v.inference import load_for_inference
from phi3v.modeling import Phi3VConfig, Phi3VForCausalLM, Phi3VProcessor, chat_prompt, tiny_config
from phi3v.modeling.model_spec import ModelSpec, load_base_model, load_processor
from phi3v.modeling.presets import preset
from phi3v.shipping.adapter import export_adapter, merge_adapter
from phi3v.shipping.model_card import RunResults
from phi3v.shipping.snapshot_files import (
    TOKENIZER_FILES,
    carry_snapshot_files,
    missing_auto_map_modules,
    tokenizer_difference,
)
from phi3v.task import TaskSpec
from phi3v.training.lora import LoraSpec, apply_lora

pytestmark = [pytest.mark.unit, pytest.mark.usefixtures("one_thread")]

HUB_ID = "microsoft/Phi-3-vision-128k-instruct"
CODE_FILES = ("configuration_phi3_v.py", "modeling_phi3_v.py", "image_processing_phi3_v.py", "processing_phi3_v.py")
MODEL_AUTO_MAP = {"AutoConfig": "configuration_phi3_v.Phi3VConfig",
                  "AutoModelForCausalLM": "modeling_phi3_v.Phi3VForCausalLM"}
PROCESSOR_AUTO_MAP = {"AutoProcessor": "processing_phi3_v.Phi3VProcessor",
                      "AutoImageProcessor": "image_processing_phi3_v.Phi3VImageProcessor"}
RELEASE_TOKENIZER = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")
RESULTS = RunResults("DBQ/Burberry.Product.prices.United.States",
                     {"val": {"price_mape": 41.25, "category_accuracy": 0.5, "count": 30.0},
                      "test": {"price_mape": 44.5, "category_accuracy": 0.625, "count": 32.0}})
ANSWER = "Product: Vintage Check Cashmere Scarf, Category: Scarves, Full Price: 1250.0<|end|>"
TEXTS = [TaskSpec().prompt() + ANSWER, " Leading  spaces, 1,250.00 €, naïve café<|end|>\n<|user|>\nnext"]


def edit_json(path: Path, **values) -> None:
    path.write_text(json.dumps({**json.loads(path.read_text()), **values}, indent=2))


@contextmanager
def umask(mask: int):
    previous = os.umask(mask)
    try:
        yield
    finally:
        os.umask(previous)


def fake_snapshot(directory: Path) -> Path:
    """A release-like snapshot (see the module docstring); its weights are float32, its config says bfloat16
    like the release's."""
    directory.mkdir(parents=True)
    torch.manual_seed(0)
    Phi3VForCausalLM(tiny_config(vocab_size=32064, bos_token_id=1, eos_token_id=2, pad_token_id=32000)).save_pretrained(
        directory)
    for name in (*RELEASE_TOKENIZER, "preprocessor_config.json"):
        shutil.copyfile(REAL_PHI3V / name, directory / name)
    edit_json(directory / "preprocessor_config.json", num_crops=4)  # fewer crops: CPU time
    for name in CODE_FILES:
        (directory / name).write_text(f"# placeholder for the snapshot's {name}\nVALUE = {len(name)}\n")
    config = json.loads((directory / "config.json").read_text())
    config.pop("dtype")
    release = {"_name_or_path": "Phi-3-vision-128k-instruct", "auto_map": MODEL_AUTO_MAP, "torch_dtype": "bfloat16",
               "transformers_version": "4.38.1", "_attn_implementation": "flash_attention_2"}
    (directory / "config.json").write_text(json.dumps({**config, **release}, indent=2))
    edit_json(directory / "generation_config.json", max_length=4096, _from_model_config=False)
    return directory


def adapter_on(base: str, out: Path, results: RunResults | None = None) -> Path:
    spec = ModelSpec(name_or_path=base)
    model = apply_lora(load_base_model(spec), LoraSpec(r=4))
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.fill_(0.01)
    return export_adapter(model.eval(), load_processor(spec), spec, TaskSpec(), out, results=results)


@pytest.fixture(scope="module")
def snapshot_export(tmp_path_factory):
    root = tmp_path_factory.mktemp("layout")
    snapshot = fake_snapshot(root / "hub" / "models--microsoft--Phi-3-vision-128k-instruct" / "snapshots" / "abc123")
    with umask(0o022):
        adapter = adapter_on(str(snapshot), root / "adapter", RESULTS)
        return snapshot, adapter, merge_adapter(adapter, root / "merged")


def read(path: Path) -> dict:
    return json.loads(path.read_text())


# ---- the snapshot's files --------------------------------------------------------------------
def test_merged_export_carries_the_snapshot_code_and_auto_map(snapshot_export):
    snapshot, _, merged = snapshot_export
    for name in CODE_FILES:
        assert (merged / name).read_bytes() == (snapshot / name).read_bytes()
    assert sorted(p.name for p in merged.glob("*.py")) == sorted(CODE_FILES)
    assert read(merged / "config.json")["auto_map"] == MODEL_AUTO_MAP
    assert read(merged / "preprocessor_config.json")["auto_map"] == PROCESSOR_AUTO_MAP
    assert missing_auto_map_modules(merged) == []  # every auto_map entry points at a file beside it
    generation = read(merged / "generation_config.json")
    processor = load_processor(ModelSpec(name_or_path=str(snapshot)))
    assert generation["max_length"] == 4096  # the snapshot's own setting, kept
    assert generation["eos_token_id"] == [2, processor.end_token_id] and generation["pad_token_id"] == 32000


def test_merged_export_tokenizer_files_are_the_base_bytes(snapshot_export):
    snapshot, adapter, merged = snapshot_export
    for name in RELEASE_TOKENIZER:
        assert (merged / name).read_bytes() == (snapshot / name).read_bytes(), name
    # phi3v's own save (the adapter's) is transformers 5's layout; the merge replaced it, leaving nothing extra
    assert (adapter / "tokenizer_config.json").read_bytes() != (snapshot / "tokenizer_config.json").read_bytes()
    assert "chat_template" in read(merged / "tokenizer_config.json")  # the release's template, where it kept it
    for name in (*set(TOKENIZER_FILES) - set(RELEASE_TOKENIZER), "chat_template.jinja", "chat_template.json"):
        assert not (merged / name).exists(), name  # the base has none, so neither has the export


def test_merged_config_keeps_the_base_keys_and_spelling(snapshot_export):
    snapshot, _, merged = snapshot_export
    base, config = read(snapshot / "config.json"), read(merged / "config.json")
    assert list(config)[: len(base)] == list(base)  # every base key, in its order
    changed = {key for key in base if config[key] != base[key]}
    assert changed == {"torch_dtype", "transformers_version", "vision_config"}
    assert config["vision_config"].items() >= base["vision_config"].items()  # nested keys kept (+ v5's dtype)
    assert config["torch_dtype"] == config["dtype"] == "float32"  # the written weights' dtype, in both spellings
    assert {"rope_parameters", "vision_config", "dtype"} <= set(config)  # what transformers 5 reads
    preprocessor = read(snapshot / "preprocessor_config.json")
    assert read(merged / "preprocessor_config.json").items() >= preprocessor.items()


def test_merged_tokenizer_loads_in_a_fresh_interpreter_with_phi3v_ids(snapshot_export):
    """tokenizers' Tokenizer.from_file and AutoTokenizer (no remote code) read the export's files; their ids are
    those phi3v trained with (the adapter's processor)."""
    _, adapter, merged = snapshot_export
    code = (
        "import json, sys\nfrom tokenizers import Tokenizer\nfrom transformers import AutoTokenizer\n"
        "texts = json.loads(sys.argv[2])\nraw = Tokenizer.from_file(sys.argv[1] + '/tokenizer.json')\n"
        "auto = AutoTokenizer.from_pretrained(sys.argv[1], trust_remote_code=False)\n"
        "print(json.dumps([[raw.encode(t).ids for t in texts], [auto(t)['input_ids'] for t in texts],"
        " [auto.pad_token_id, auto.convert_tokens_to_ids('<|end|>')]]))\n"
    )
    result = subprocess.run([sys.executable, "-c", code, str(merged), json.dumps(TEXTS)], capture_output=True,
                            text=True, timeout=120, stdin=subprocess.DEVNULL)
    assert result.returncode == 0, result.stderr[-2000:]
    raw, auto, (pad, end) = json.loads(result.stdout.splitlines()[-1])
    trained = Phi3VProcessor.from_pretrained(adapter)
    expected = [trained.tokenizer(text)["input_ids"] for text in TEXTS]
    assert expected[0][:4] == [1, 32010, 29871, 13]  # <s> <|user|> ▁ \n: the release's ids
    assert raw == auto == expected
    assert (pad, end) == (trained.pad_token_id, trained.end_token_id) == (32000, 32007)


def test_phi3v_reads_the_merged_export_as_it_trained(snapshot_export):
    """The base's tokenizer files change none of phi3v's ids, labels, stop/pad ids or chat template."""
    _, adapter, merged = snapshot_export
    trained, (_, loaded, task) = Phi3VProcessor.from_pretrained(adapter), load_for_inference(merged)
    images = [Image.new("RGB", (200, 150), "navy"), Image.new("RGB", (90, 300), "white")]
    answers = ["Product: Check Scarf, Category: Scarves, Full Price: 1250.0"] * 2
    ours = trained([task.prompt()] * 2, images, answers, padding_side="left")
    theirs = loaded([task.prompt()] * 2, images, answers)
    for key in ("input_ids", "labels", "attention_mask"):
        assert torch.equal(theirs[key], ours[key]), key
    assert (loaded.pad_token_id, loaded.end_token_id) == (trained.pad_token_id, trained.end_token_id)
    messages = [{"role": "user", "content": task.question}]
    assert loaded.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True) == \
        chat_prompt(messages)
    assert loaded.decode(ours["input_ids"][0]) == trained.decode(ours["input_ids"][0])


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
    batch = processor(TaskSpec().prompt(), [Image.new("RGB", (200, 150), "navy")])
    with torch.no_grad():
        torch.testing.assert_close(plain(**batch).logits, model(**batch).logits, atol=1e-5, rtol=1e-5)


def test_a_base_tokenizer_phi3v_reads_differently_is_not_carried(snapshot_export, tmp_path, caplog):
    snapshot, adapter, _ = snapshot_export
    assert tokenizer_difference(snapshot, adapter) is None
    edited = shutil.copytree(snapshot, tmp_path / "edited")
    edit_json(edited / "tokenizer_config.json", chat_template="{{ messages[0]['content'] }}")
    assert tokenizer_difference(edited, adapter) == "their chat template differ"
    assert tokenizer_difference(preset("tiny").tokenizer_directory, adapter).startswith(
        "their vocabulary, special token ids, ids of a probe text")
    out = shutil.copytree(adapter, tmp_path / "out")
    with caplog.at_level(logging.WARNING, logger="phi3v"):
        carry_snapshot_files(ModelSpec(name_or_path=str(edited)), out)
    assert "keeps phi3v's tokenizer files" in caplog.text and "chat template differ" in caplog.text
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        assert (out / name).read_bytes() == (adapter / name).read_bytes(), name


# ---- permissions -----------------------------------------------------------------------------
def modes(directory: Path) -> set[tuple[str, int]]:
    return {("dir" if p.is_dir() else "file", p.stat().st_mode & 0o777) for p in [directory, *directory.iterdir()]}


def test_exports_are_readable_by_everyone_under_the_usual_umask(snapshot_export):
    _, adapter, merged = snapshot_export  # written under umask 022
    assert modes(merged) == modes(adapter) == {("dir", 0o755), ("file", 0o644)}


def test_exports_follow_a_stricter_umask(tmp_path):
    with umask(0o027):
        adapter = adapter_on("tiny", tmp_path / "adapter")
    assert modes(adapter) == {("dir", 0o750), ("file", 0o640)}
    assert modes(tmp_path) != modes(adapter)  # pytest's own directory is not what set them


# ---- model cards -----------------------------------------------------------------------------
def test_merged_export_has_a_model_card_with_the_run(snapshot_export):
    _, adapter, merged = snapshot_export
    card = ModelCard.load(merged / "README.md")
    assert card.data.base_model == HUB_ID  # from the HF cache path of the local snapshot
    assert card.data.library_name == "transformers" and card.data.pipeline_tag == "image-text-to-text"
    assert {"phi3v", "lora"} <= set(card.data.tags) and "peft" not in card.data.tags
    assert card.data.datasets == [RESULTS.dataset]
    assert TaskSpec().prompt() + TaskSpec().answer in card.text
    assert "| metric | val | test |" in card.text and "| price_mape | 41.25 | 44.5 |" in card.text
    assert "| count | 30 | 32 |" in card.text
    assert f'AutoModelForCausalLM.from_pretrained("{merged}", trust_remote_code=True' in card.text
    assert f"vllm serve {merged} --trust-remote-code" in card.text
    assert f"python -m phi3v.predict adapter={merged} image=photo.jpg" in card.text
    assert RunResults.load(merged) == RunResults.load(adapter) == RESULTS


def test_adapter_has_a_model_card_instead_of_peft_s_template(snapshot_export):
    _, adapter, _ = snapshot_export
    card = ModelCard.load(adapter / "README.md")
    assert card.data.library_name == "peft" and "peft" in card.data.tags and card.data.base_model == HUB_ID
    assert "| category_accuracy | 0.5 | 0.625 |" in card.text and "merge=true" in card.text
    assert "More Information Needed" not in card.text and "trust_remote_code" not in card.text


def test_merge_logs_each_stage_and_what_a_preset_base_leaves_out(tmp_path, caplog):
    adapter = adapter_on("tiny", tmp_path / "adapter")
    with caplog.at_level(logging.INFO, logger="phi3v"):
        merged = merge_adapter(adapter, tmp_path / "merged")
    assert not list(merged.glob("*.py")) and "auto_map" not in read(merged / "config.json")
    assert "torch_dtype" not in read(merged / "config.json")  # nothing to keep the spelling of
    assert (merged / "tokenizer_config.json").read_bytes() == (adapter / "tokenizer_config.json").read_bytes()
    assert "leaves out auto_map, the snapshot's code files (*.py), its tokenizer files" in caplog.text
    assert "the base is the preset tiny" in caplog.text
    for stage in ("[1] loaded the base (tiny", "[2] folded the LoRA deltas", "[3] saved the weights",
                  "[4] checked every tensor"):
        assert stage in caplog.text
    card = ModelCard.load(merged / "README.md")  # the card is written all the same
    assert card.data.base_model is None and card.data.datasets is None
    assert "No metrics recorded" in card.text and "loads with phi3v only" in card.text
    assert "trust_remote_code" not in card.text and not (merged / "metrics.json").exists()


# ---- config files ----------------------------------------------------------------------------
def test_json_files_keep_the_base_keys_under_phi3v_values(tmp_path, caplog):
    snapshot, out = tmp_path / "snapshot", tmp_path / "out"
    snapshot.mkdir(), out.mkdir()
    (snapshot / "config.json").write_text(json.dumps(
        {"torch_dtype": "bfloat16", "rope_scaling": {"type": "su", "short_factor": [1.0]}, "kept": 1, "same": 2}))
    (snapshot / "processor_config.json").write_text(json.dumps({"num_crops": 16}))  # phi3v writes none: not added
    (out / "config.json").write_text(json.dumps(
        {"same": 3, "rope_scaling": {"short_factor": [2.0], "rope_type": "longrope"}, "dtype": "float32"}))
    with caplog.at_level(logging.WARNING, logger="phi3v"):
        carry_snapshot_files(ModelSpec(name_or_path=str(snapshot)), out)
    config = read(out / "config.json")
    assert config == {"torch_dtype": "float32", "rope_scaling": {"type": "su", "short_factor": [2.0],
                      "rope_type": "longrope"}, "kept": 1, "same": 3, "dtype": "float32"}
    assert list(config) == ["torch_dtype", "rope_scaling", "kept", "same", "dtype"]
    assert not (out / "processor_config.json").exists()
    assert "has no tokenizer.json" in caplog.text  # so phi3v's tokenizer files, if any, stay


def test_the_release_config_keeps_its_spelling(tmp_path):
    """The real Phi-3-vision-128k config and tokenizer through phi3v's save (transformers 5) and the carry-over."""
    out = tmp_path / "out"
    Phi3VConfig.from_pretrained(REAL_PHI3V).save_pretrained(out)
    Phi3VProcessor.from_pretrained(REAL_PHI3V).save_pretrained(out)
    assert "torch_dtype" not in read(out / "config.json")  # what transformers 5 alone writes
    assert read(out / "tokenizer_config.json")["tokenizer_class"] == "TokenizersBackend"  # unknown to 4.x
    carry_snapshot_files(ModelSpec(name_or_path=str(REAL_PHI3V)), out)
    release, config = read(REAL_PHI3V / "config.json"), read(out / "config.json")
    assert {key for key in release if config[key] != release[key]} == {"transformers_version"}
    assert config["torch_dtype"] == config["dtype"] == "bfloat16" and config["auto_map"] == release["auto_map"]
    for name in RELEASE_TOKENIZER:
        assert (out / name).read_bytes() == (REAL_PHI3V / name).read_bytes(), name
