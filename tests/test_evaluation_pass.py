"""Tier 2: evaluation's memory and autograd mode: the loss pass keeps no KV cache and its logits are
gone before generation; evaluation runs under no_grad, never inference_mode, whatever the Trainer."""

from __future__ import annotations

import weakref
from functools import partial
from pathlib import Path

import lightning as L
import pytest
import torch
from hydra import compose, initialize_config_dir
from PIL import Image
from torch.utils.data import DataLoader

import phi3v.training.module as module_code
from phi3v.config_schema import register_schemas
from phi3v.data.collate import Phi3VCollator
from phi3v.data.dataset import Sample
from phi3v.modeling.model_spec import ModelSpec
from phi3v.task import TaskSpec
from phi3v.training.lora import LoraSpec
from phi3v.training.module import EvalSpec, Phi3VLitModule

pytestmark = pytest.mark.unit

SPEC = ModelSpec(num_crops=1)
CONF = Path(__file__).resolve().parents[1] / "conf"


def samples(count: int = 2) -> list[Sample]:
    colours = ["red", "blue", "green", "white"]
    return [
        Sample(index=i, product_id=f"p{i}", truth={"title": f"Scarf {i}", "category": "Scarves", "price": 100.0 + i},
               image_paths=(f"{i}.jpg",), images=(Image.new("RGB", (300 + 40 * i, 200), colours[i % 4]),))
        for i in range(count)
    ]


def make_module(processor) -> Phi3VLitModule:
    module = Phi3VLitModule(
        spec=SPEC, lora=LoraSpec(r=4, dropout=0.0), optimizer=partial(torch.optim.AdamW, lr=1e-3), scheduler=None,
        processor=processor, task=TaskSpec(), evaluation=EvalSpec(max_new_tokens=3),
    )
    module.configure_model()
    return module


def test_loss_pass_keeps_no_cache_and_frees_its_logits_before_generating(processor, monkeypatch):
    module = make_module(processor)
    module.model.eval()
    batch = Phi3VCollator(processor, TaskSpec(), "eval")(samples())
    seen = {}

    def loss_pass(model, args, kwargs, output):  # PEFT's wrapper: only the loss pass goes through it
        seen["cache"] = output.cache
        seen["logits"] = weakref.ref(output.logits)  # no strong reference from the test

    module.model.register_forward_hook(loss_pass, with_kwargs=True)
    generate = module_code.greedy_answers

    def greedy_answers(*args, **kwargs):
        seen["logits_alive_while_generating"] = seen["logits"]() is not None
        return generate(*args, **kwargs)

    monkeypatch.setattr(module_code, "greedy_answers", greedy_answers)
    module._evaluate(batch, "val")
    assert seen["cache"] is None  # the model's config says use_cache=True: a DynamicCache without the fix
    assert seen["logits_alive_while_generating"] is False
    records = module._records["val"]
    assert [r.index for r in records] == [0, 1] and all(r.tokens > 0 for r in records)


class AutogradModes(L.Callback):
    """Records (inference_mode, grad) as seen by the model's forward during evaluation."""

    def __init__(self):
        self.modes = []

    def on_test_start(self, trainer, module):
        module.model.register_forward_pre_hook(
            lambda *_: self.modes.append((torch.is_inference_mode_enabled(), torch.is_grad_enabled()))
        )


def test_evaluation_runs_under_no_grad_even_when_the_trainer_picks_inference_mode(processor):
    """A plain Trainer (inference_mode=True, no gloo group: what Lightning does on NCCL for FSDP2) tests
    the module; its forward must see no_grad and no inference mode."""
    module = make_module(processor)
    modes = AutogradModes()
    trainer = L.Trainer(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, callbacks=[modes])
    assert trainer.test_loop.inference_mode is True
    loader = DataLoader(samples(2), batch_size=2, collate_fn=Phi3VCollator(processor, TaskSpec(), "eval"))
    trainer.test(module, dataloaders=loader, verbose=False)
    assert modes.modes == [(False, False)]  # the loss pass (generation calls the inner model)
    assert len(module.results.records["test"]) == 2


def test_train_builds_its_trainer_without_inference_mode(tmp_path):
    import train

    register_schemas()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("train", overrides=["logger=none"])
    trainer = train.build_trainer(cfg, tmp_path, None, train.launch_plan(cfg))
    assert trainer.test_loop.inference_mode is False and trainer.validate_loop.inference_mode is False
