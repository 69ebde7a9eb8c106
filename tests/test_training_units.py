"""Tier 2: LoRA selection, schedules, trainable-only checkpoints, the non-finite guard."""

from __future__ import annotations

import math
import random
from functools import partial

import numpy as np
import pytest
import torch

from phi3v.modeling.model_spec import ModelSpec, load_base_model
from phi3v.task import TaskSpec
from phi3v.training.lora import LoraSpec, apply_lora, trainable_parameter_names
from phi3v.training.losses import logits_window
from phi3v.training.module import EvalSpec, Phi3VLitModule, capture_rng, restore_rng
from phi3v.training.reporting import curve_keys
from phi3v.training.schedules import WarmupSchedule, lr_factor

pytestmark = pytest.mark.unit

SPEC = ModelSpec(num_crops=4)
PROMPT = TaskSpec().prompt()


@pytest.fixture(scope="module")
def batch(processor, images):
    answers = ["Product: A, Category: B, Full Price: 10.0", "Product: C, Category: D, Full Price: 20.0"]
    return processor([PROMPT, PROMPT], images, answers=answers)


def lora_kind(name: str) -> str:
    for kind in ("lora_A", "lora_B", "modules_to_save"):
        if kind in name:
            return kind
    return "other"


@pytest.mark.parametrize("projector", [False, True])
def test_trainable_parameters_are_exactly_lora_and_each_learns(batch, projector):
    model = apply_lora(load_base_model(SPEC), LoraSpec(r=4, alpha=8, dropout=0.0, train_projector=projector))
    names = trainable_parameter_names(model)
    kinds = {lora_kind(n) for n in names}
    assert kinds == ({"lora_A", "lora_B", "modules_to_save"} if projector else {"lora_A", "lora_B"})
    adapted = {n.split(".lora_")[0] for n in names if "lora_" in n}
    # 2 decoder layers x 4 projections, nothing in the vision tower
    assert len(adapted) == 8 and all(".layers." in n and "vision" not in n for n in adapted)
    if projector:
        assert all("img_projection" in n for n in names if "modules_to_save" in n)
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    for _ in range(2):  # lora_B starts at zero, so lora_A gets a gradient from the 2nd step on
        optimizer.zero_grad()
        model(**batch).loss.backward()
        optimizer.step()
    for name, parameter in model.named_parameters():
        if parameter.requires_grad:
            assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name


def test_fully_trained_modules_are_exactly_the_named_ones():
    spec = LoraSpec(r=4, modules_to_save=("lm_head", "embed_tokens"), train_projector=True)
    names = trainable_parameter_names(apply_lora(load_base_model(SPEC), spec))
    whole = sorted({n.split(".modules_to_save")[0] for n in names if "modules_to_save" in n})
    assert whole == [
        "base_model.model.lm_head", "base_model.model.model.embed_tokens",
        "base_model.model.model.vision_embed_tokens.img_projection",
    ]  # not the vision tower, whose name also ends in "embed_tokens"
    with pytest.raises(ValueError, match="model.lora.modules_to_save"):
        LoraSpec(modules_to_save=("vision_embed_tokens",))


def test_vision_lora_skips_the_unused_last_clip_layer():
    model = apply_lora(load_base_model(SPEC), LoraSpec(r=4, vision=True))
    vision = {n for n in trainable_parameter_names(model) if "vision_model" in n}
    assert vision and all(".encoder.layers.0." in n for n in vision)  # tiny CLIP: 2 layers, only layer 0 feeds


def test_schedule_factors():
    assert lr_factor(0, 100, 10, "cosine", 0.1) == pytest.approx(0.1)
    assert lr_factor(9, 100, 10, "cosine", 0.1) == pytest.approx(1.0)
    assert lr_factor(55, 100, 10, "cosine", 0.1) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert lr_factor(100, 100, 10, "cosine", 0.1) == pytest.approx(0.1)
    assert lr_factor(55, 100, 10, "linear", 0.0) == pytest.approx(0.5)
    assert lr_factor(80, 100, 10, "constant", 0.0) == 1.0
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    config = WarmupSchedule(kind="linear", warmup_ratio=0.1, min_lr_ratio=0.0)(optimizer, 100)
    assert config["interval"] == "step" and optimizer.param_groups[0]["lr"] == pytest.approx(0.1)
    with pytest.raises(ValueError, match="scheduler.kind"):
        WarmupSchedule(kind="step")
    with pytest.raises(ValueError, match=r"scheduler\.warmup_ratio must be in \[0, 1\), got 1"):
        WarmupSchedule(warmup_ratio=1)
    WarmupSchedule(kind="constant", warmup_ratio=0.0)(optimizer, 100)  # no warmup: the full lr from step 0
    assert optimizer.param_groups[0]["lr"] == 1.0


def make_module(processor, **evaluation):
    return Phi3VLitModule(
        spec=SPEC, lora=LoraSpec(r=4, dropout=0.0), optimizer=partial(torch.optim.AdamW, lr=1e-3), scheduler=None,
        processor=processor, task=TaskSpec(), evaluation=EvalSpec(**evaluation),
    )


def test_checkpoints_hold_only_trainable_weights_and_refuse_mismatches(processor):
    module = make_module(processor)
    module.configure_model()
    module.configure_model()  # idempotent
    checkpoint = {"state_dict": module.state_dict()}
    module.on_save_checkpoint(checkpoint)
    assert set(checkpoint["state_dict"]) == set(module.trainable_names())
    assert {"torch", "numpy", "python"} <= set(checkpoint["rng"])
    module.nonfinite_total = 0
    module.on_load_checkpoint({**checkpoint, "nonfinite_total": 3})
    assert module.nonfinite_total == 3  # skipped non-finite steps keep counting across a resume
    del checkpoint["state_dict"][next(iter(checkpoint["state_dict"]))]
    with pytest.raises(RuntimeError, match="lacks 1 trainable weights"):
        module.on_load_checkpoint(checkpoint)


def next_draws() -> tuple:
    return torch.rand(3).tolist(), float(np.random.rand()), random.random()


def test_rng_states_round_trip_through_a_weights_only_checkpoint_with_cuda_where_used(monkeypatch, tmp_path):
    def through_file(state: dict) -> dict:  # as Lightning loads checkpoints: weights_only=True
        torch.save({"rng": state}, tmp_path / "rng.ckpt")
        return torch.load(tmp_path / "rng.ckpt", weights_only=True)["rng"]

    cpu = through_file(capture_rng())
    assert "cuda" not in cpu or torch.cuda.is_initialized()
    expected = next_draws()
    restore_rng(cpu)
    assert next_draws() == expected

    # A GPU process (faked: this machine has none): its device's generator state travels along.
    generator, restored = torch.arange(16, dtype=torch.uint8), []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_rng_state", lambda device="cuda": generator.clone())
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda state, device="cuda": restored.append(state))
    gpu = through_file(capture_rng())
    after_gpu_capture = next_draws()
    assert torch.equal(gpu["cuda"], generator)
    restore_rng(gpu)
    assert len(restored) == 1 and torch.equal(restored[0], generator)
    restore_rng({key: value for key, value in gpu.items() if key != "cuda"})  # a CPU run's checkpoint on a GPU
    assert len(restored) == 1
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # the GPU run's checkpoint on a CPU machine
    restore_rng(gpu)
    assert len(restored) == 1 and next_draws() == after_gpu_capture


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_draws_continue_exactly_after_a_restore(tmp_path):
    torch.rand(1, device="cuda")  # CUDA in use: its generator state is captured
    torch.save({"rng": capture_rng()}, tmp_path / "rng.ckpt")
    expected = torch.rand(4, device="cuda").tolist()
    restore_rng(torch.load(tmp_path / "rng.ckpt", weights_only=True)["rng"])
    assert torch.rand(4, device="cuda").tolist() == expected


class FakeTrainer:
    world_size = 1


def test_training_metrics_are_logged_on_the_logged_steps_with_the_window_since_the_last(processor, batch,
                                                                                         monkeypatch):
    """Lightning's logger records every trainer.log_every_n_steps: the steps between log nothing (each
    self.log costs) and the logged one reports the skipped photos of all of them and their throughput."""
    module = make_module(processor)
    module.configure_model()
    logs_now = [False, False, True, False, True]

    class Connector:
        @property
        def should_update_logs(self):
            return logs_now[0]

    class LoggingTrainer(FakeTrainer):
        _logger_connector = Connector()

    monkeypatch.setattr(Phi3VLitModule, "trainer", property(lambda self: LoggingTrainer()))
    logged = []
    monkeypatch.setattr(module, "log", lambda name, value, **k: logged.append((name, float(value))))
    skipped = [1, 0, 2, 1, 0]
    for n in skipped:
        row = training_batch(batch, [True, True])
        module.training_step({**row, "meta": {**row["meta"], "skipped_images": n}}, 0)
        if not logs_now.pop(0):
            assert logged == []
            continue
        names = dict(logged)
        assert names["train/skipped_images"] == sum(skipped[:3]) if len(logs_now) == 2 else sum(skipped[3:])
        # the first logged step has no earlier one to time from; the second covers its 2 steps of 2 samples
        assert ("train/samples_per_s" in names) == (len(logs_now) == 0)
        assert set(names) >= {"train/loss", "train/skipped_images", "train/peak_memory_gib"}
        logged.clear()
    window, seconds = module._unlogged.take()
    assert (window.samples, window.skipped_images) == (0, 0) and seconds is not None


def training_batch(batch, supervised):
    labels = batch["labels"].clone()
    labels[~torch.tensor(supervised)] = -100
    return {**batch, "labels": labels, "meta": {"supervised": supervised, "skipped_images": 0}}


def test_training_loss_is_the_token_mean_of_supervised_rows_only(processor, batch, monkeypatch):
    module = make_module(processor)
    module.configure_model()
    monkeypatch.setattr(Phi3VLitModule, "trainer", property(lambda self: FakeTrainer()))
    logged = {}
    monkeypatch.setattr(module, "log", lambda name, value, **k: logged.__setitem__(name, value))
    forward, kept = module.model.forward, []
    monkeypatch.setattr(module.model, "forward", lambda **k: kept.append(k.get("logits_to_keep")) or forward(**k))
    both = module.training_step(training_batch(batch, [True, True]), 0)
    # the lm_head ran over the answer positions only (losses.logits_window), not the whole sequence
    assert kept == [logits_window(batch["labels"])] and 0 < kept[0] < batch["labels"].shape[1] // 2
    monkeypatch.setattr(module.model, "forward", forward)
    torch.testing.assert_close(both, module.model(**batch).loss)  # the model's own token mean
    torch.testing.assert_close(logged["train/loss"], both.detach())  # and what train/loss shows
    first_only = module.training_step(training_batch(batch, [True, False]), 0)
    alone = {key: value[:1] for key, value in batch.items()}
    alone["pixel_values"], alone["image_sizes"] = batch["pixel_values"][:1], batch["image_sizes"][:1]
    torch.testing.assert_close(first_only, module.model(**alone).loss, rtol=1e-5, atol=1e-6)
    first_only.backward()  # every trainable weight takes part, also through the unsupervised row
    assert all(p.grad is not None for p in module.parameters() if p.requires_grad)
    assert module.training_step(training_batch(batch, [False, False]), 0) is None  # nothing to learn from
    assert module.nonfinite_total == 0


def test_nonfinite_losses_are_skipped_then_stop_the_run(processor, batch, monkeypatch):
    module = make_module(processor, max_nonfinite_steps=3)
    module.configure_model()
    monkeypatch.setattr(Phi3VLitModule, "trainer", property(lambda self: FakeTrainer()))
    monkeypatch.setattr(module, "log", lambda *a, **k: None)
    forward, poison = module.model.forward, {"value": 1.0}

    def poisoned(**inputs):
        output = forward(**inputs)
        output.loss = output.loss * poison["value"]  # the loss the step uses
        return output

    monkeypatch.setattr(module.model, "forward", poisoned)
    step = partial(module.training_step, training_batch(batch, [True, True]), 0)

    def step_with(value):
        poison["value"] = value
        return step()

    assert step_with(1.0) is not None
    assert step_with(float("nan")) is None
    assert step_with(float("inf")) is None
    assert step_with(1.0) is not None and module.nonfinite_in_a_row == 0
    assert module.nonfinite_total == 2
    step_with(float("nan"))
    step_with(float("nan"))
    with pytest.raises(RuntimeError, match="3 non-finite losses in a row"):
        step_with(float("nan"))


def test_a_rank_without_supervised_rows_still_backpropagates_through_every_weight(processor, batch, monkeypatch):
    """Under DDP, a rank whose rows are all padding/unreadable must still give every trainable weight a
    (zero) gradient, or the gradient all-reduce would wait for it. The other rank is simulated by an
    all-reduce that adds its (loss sum, tokens, samples, tokens) totals."""
    module = make_module(processor)
    module.configure_model()

    class TwoRanks:
        world_size = 2

    other_rank = torch.tensor([20.0, 10.0, 2.0, 500.0])
    monkeypatch.setattr(Phi3VLitModule, "trainer", property(lambda self: TwoRanks()))
    monkeypatch.setattr(module, "log", lambda *a, **k: None)
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.distributed, "all_reduce", lambda values, op=None: values.add_(other_rank))
    loss = module.training_step(training_batch(batch, [False, False]), 0)
    assert loss is not None and float(loss) == 0.0
    loss.backward()
    for name, parameter in module.named_parameters():
        if parameter.requires_grad:
            assert parameter.grad is not None and not parameter.grad.any(), name


def test_validations_in_training_score_the_val_limit_and_validate_scores_the_whole_split(processor, tmp_path):
    """data.val_limit=4: each validation during fit generates for the same 4 val products; the
    validation train.py runs after fit scores all of them."""
    import lightning as L

    from phi3v.data.datamodule import ProductDataModule
    from phi3v.data.spec import DataSpec
    from phi3v.data.synthetic import SyntheticSpec

    datamodule = ProductDataModule(DataSpec(data_dir=str(tmp_path), synthetic=SyntheticSpec(num_products=40, seed=3),
                                            val_fraction=0.25, batch_size=2, eval_batch_size=4, val_limit=4))
    datamodule.connect(processor)
    datamodule.prepare_data()
    datamodule.setup("fit")
    scored, seconds = [], []

    class Scored(L.Callback):
        def on_validation_end(self, trainer, module):
            records = module.results.records["val"]
            scored.append((trainer.state.fn.value, sorted(r.index for r in records),
                           float(trainer.callback_metrics["val/count"])))
            seconds.append(float(trainer.callback_metrics["val/seconds"]))  # its wall time, generation included

    module = make_module(processor, max_new_tokens=4)
    trainer = L.Trainer(accelerator="cpu", devices=1, max_steps=2, val_check_interval=1, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        num_sanity_val_steps=0, callbacks=[Scored()])
    trainer.fit(module, datamodule=datamodule)
    trainer.validate(module, datamodule=datamodule, ckpt_path=None)
    subset = sorted(datamodule.val_subset().tolist())
    every = list(range(len(datamodule.datasets["val"])))
    assert len(every) == 10 and len(subset) == 4
    assert scored == [("fit", subset, 4.0), ("fit", subset, 4.0), ("validate", every, 10.0)]
    assert len(seconds) == 3 and all(0 < s < 60 for s in seconds)
    history = module.results.history["val"]
    assert len(history) == 3 and all(set(curve_keys(TaskSpec())) <= set(h) for h in history)
