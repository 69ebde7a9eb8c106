"""Tier 2: hub ids resolve through a local HF cache with HF_HUB_OFFLINE=1 (no network, no remote code).

huggingface_hub reads HF_HUB_OFFLINE / HF_HUB_CACHE when it is imported, so the loading runs in a
fresh interpreter with those variables set.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest
from golden_data import TINY_MODEL

pytestmark = pytest.mark.unit

COMMIT = "0123456789abcdef0123456789abcdef01234567"
HUB_IDS = ["microsoft/Phi-3-vision-128k-instruct", "microsoft/Phi-3.5-vision-instruct"]

LOAD_SCRIPT = """
import sys, torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoProcessor
from phi3v.modeling import Phi3VConfig, Phi3VForCausalLM, Phi3VProcessor, register_auto_classes
register_auto_classes()
hub_id = sys.argv[1]
model, info = Phi3VForCausalLM.from_pretrained(hub_id, output_loading_info=True)
assert not info["missing_keys"] and not info["unexpected_keys"], info
auto = AutoModelForCausalLM.from_pretrained(hub_id)
assert type(auto) is Phi3VForCausalLM and type(AutoConfig.from_pretrained(hub_id)) is Phi3VConfig
processor = Phi3VProcessor.from_pretrained(hub_id, num_crops=4)
assert processor.image_processor.num_crops == 4
assert type(AutoProcessor.from_pretrained(hub_id)) is Phi3VProcessor
batch = processor("<|user|>\\nHi<|end|>\\n<|assistant|>\\n")
out = model.generate(**batch, max_new_tokens=3, do_sample=False, eos_token_id=None, pad_token_id=512)
print("OK", out.shape[1] - batch["input_ids"].shape[1])
"""


def make_hf_cache(root, hub_id: str) -> None:
    """The layout huggingface_hub writes: blobs behind snapshots/<commit>/, refs/main -> commit."""
    repo = root / ("models--" + hub_id.replace("/", "--"))
    snapshot = repo / "snapshots" / COMMIT
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(COMMIT)
    for file in TINY_MODEL.iterdir():
        shutil.copy(file, snapshot / file.name)


@pytest.mark.parametrize("hub_id", HUB_IDS)
def test_hub_id_loads_from_offline_cache(hub_id, tmp_path):
    cache = tmp_path / "hub"
    make_hf_cache(cache, hub_id)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(cache), "HF_HOME": str(tmp_path / "home")}
    result = subprocess.run(
        [sys.executable, "-c", LOAD_SCRIPT, hub_id], env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().splitlines()[-1] == "OK 3"


def test_unknown_hub_id_offline_fails_with_clear_message(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(tmp_path), "HF_HOME": str(tmp_path)}
    script = "from phi3v.modeling import Phi3VProcessor; Phi3VProcessor.from_pretrained('nobody/nothing')"
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode != 0
    assert "could not find 'nobody/nothing'" in result.stderr
    assert "HF_HUB_OFFLINE=1" in result.stderr
