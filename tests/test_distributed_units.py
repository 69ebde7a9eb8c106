"""Tier 2: the pieces of distributed training that run without a process group."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from phi3v.inference import Answer
from phi3v.modeling.model_spec import ModelSpec, load_base_model, load_processor
from phi3v.task import TaskSpec
from phi3v.training.evaluation import EvalRecord
from phi3v.training.gathering import gather_records
from phi3v.training.launch import external_cluster, join_external_launch
from phi3v.training.lora import LoraSpec, apply_lora
from phi3v.training.losses import per_sample_loss
from phi3v.training.sharding import gathered_adapter_state, shard_units

pytestmark = pytest.mark.unit

SPEC = ModelSpec(num_crops=1)


@pytest.fixture(scope="module")
def model():
    return apply_lora(load_base_model(SPEC), LoraSpec(r=4, dropout=0.0, train_projector=True))


def test_per_sample_losses_add_up_to_each_samples_own_loss(model):
    processor = load_processor(SPEC)
    prompt = TaskSpec().prompt()
    images = [Image.new("RGB", (300, 200), "red"), Image.new("RGB", (200, 500), "blue")]
    answers = ["Product: A, Category: B, Full Price: 10.0", "Product: Longer title here, Category: D, Full Price: 2.5"]
    batch = processor([prompt, prompt], images, answers=answers)
    with torch.no_grad():
        sums, tokens = per_sample_loss(model(**batch).logits, batch["labels"])
        torch.testing.assert_close(sums.sum() / tokens.sum(), model(**batch).loss)  # the batch's token mean
        for row in range(2):
            alone = processor([prompt], [images[row]], answers=[answers[row]])
            assert tokens[row] == (alone["labels"][:, 1:] != -100).sum()
            torch.testing.assert_close(sums[row] / tokens[row], model(**alone).loss, rtol=1e-5, atol=1e-5)


def record(index: int) -> EvalRecord:
    answer = Answer(f"p{index}", (f"{index}.jpg",), "target", "answer", {"price": None}, {"price": 1.0})
    return EvalRecord(index, answer, loss_sum=0.5, tokens=1)


def test_gathered_records_are_sorted_and_duplicates_fail():
    records = [record(3), record(1), record(2)]
    assert [r.index for r in gather_records(records, world_size=1)] == [1, 2, 3]
    with pytest.raises(RuntimeError, match=r"samples \[1\] more than once"):
        gather_records([*records, record(1)], world_size=1)


def test_shard_units_are_every_decoder_and_clip_layer(model):
    units = shard_units(model)
    names = sorted({type(u).__name__ for u in units})
    config = model.get_base_model().config
    assert names == ["CLIPEncoderLayer", "Phi3DecoderLayer"]
    assert len(units) == config.num_hidden_layers + config.vision_config.num_hidden_layers


def test_adapter_state_holds_lora_and_saved_modules_only(model):
    state = gathered_adapter_state(model)
    assert state and all("lora_" in k or "modules_to_save." in k for k in state)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable <= set(state)
    assert all(v.device.type == "cpu" for v in state.values())
    weights = model.state_dict()
    for name, value in state.items():  # the values themselves, not only the names
        assert torch.equal(value, weights[name].cpu()), name
    assert any(value.abs().sum() > 0 for name, value in state.items() if "lora_A" in name)


def test_single_process_launches_are_left_alone(monkeypatch):
    for variable in ("RANK", "GROUP_RANK", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "WORLD_SIZE", "SLURM_NTASKS"):
        monkeypatch.delenv(variable, raising=False)
    assert external_cluster() is None
    assert join_external_launch(["train.py", "x=1"]) == ["train.py", "x=1"]


def test_multirun_under_torchrun_is_refused_before_joining(monkeypatch):
    environment = {"RANK": "1", "GROUP_RANK": "1", "LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": "1", "WORLD_SIZE": "2",
                   "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "1", "TORCHELASTIC_RUN_ID": "test"}
    for key, value in environment.items():
        monkeypatch.setenv(key, value)
    assert external_cluster() is not None
    with pytest.raises(SystemExit, match="multirun"):
        join_external_launch(["train.py", "-m", "optimizer.lr=1e-4,2e-4"])
