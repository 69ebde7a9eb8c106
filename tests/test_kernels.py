"""Tier 2: fused kernels (`model.spec.kernels`): refused early and by name where they cannot run, the
fused lm_head + loss seam of the model and the training step, and (on a CUDA machine with
liger-kernel) Liger's results against PyTorch's on the real-width model at reduced depth.

The GPU tests are what `benchmarks/gpu_check.sh` runs first on a GPU box; here they are skipped.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import types
from functools import partial
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from phi3v.config_checks import config_problems
from phi3v.modeling import IGNORE_INDEX, kernels
from phi3v.modeling.checkpointing import checkpoint_options
from phi3v.modeling.configuration import CLIP_VIT_L_14_336
from phi3v.modeling.kernels import KernelsUnavailable, kernels_problem, linear_cross_entropy
from phi3v.modeling.model_spec import ModelSpec, load_base_model, load_processor
from phi3v.modeling.random_weights import build_random_model
from phi3v.task import TaskSpec
from phi3v.training.lora import LoraSpec, apply_lora, cast_lora_inputs
from phi3v.training.losses import logits_window, per_sample_loss
from phi3v.training.module import EvalSpec, Phi3VLitModule

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[1]
SPEC = ModelSpec(num_crops=1)
ANSWERS = ["Product: Check Wool Scarf, Category: Scarves, Full Price: 490.00", "Product: Trench, Category: Coats"]
GPU = torch.cuda.is_available() and importlib.util.find_spec("liger_kernel") is not None


@pytest.fixture(scope="module")
def batch(processor, images):
    return processor([TaskSpec().prompt()] * 2, images, answers=ANSWERS, padding_side="right")


# ---- refused early, naming the key ---------------------------------------------------------------
def test_liger_on_a_machine_without_cuda_fails_at_model_build_naming_the_key(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    spec = ModelSpec(kernels="liger")  # a valid spec: a GPU run's, read back on a CPU machine
    message = r"model\.spec\.kernels=liger runs Triton kernels, which need a CUDA GPU.*set model\.spec\.kernels=null"
    assert kernels_problem("liger") is not None and kernels_problem(None) is None
    with pytest.raises(KernelsUnavailable, match=message):
        load_base_model(spec)
    assert spec.for_inference().kernels is None  # predict/export rebuild it with PyTorch's kernels


def test_liger_without_the_package_names_the_install(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "liger_kernel" else True)
    assert kernels_problem("liger") == ("model.spec.kernels=liger needs the liger-kernel package: pip install -e "
                                        ".[gpu]  (or: pip install liger-kernel), or set model.spec.kernels=null")


def test_unknown_kernels_fail_naming_the_key(hydra_context):
    from hydra import compose

    with pytest.raises(ValueError, match=r"model\.spec\.kernels must be null or one of liger, got 'triton'"):
        ModelSpec(kernels="triton")
    wrong = compose("train", overrides=["model.spec.kernels=triton"])
    assert config_problems(wrong) == ["model.spec.kernels=triton: must be one of liger, or null"]
    on_cpu = compose("train", overrides=["model.spec.kernels=liger", "hardware=cpu"])
    assert config_problems(on_cpu) == [
        "model.spec.kernels=liger: its Triton kernels need a CUDA GPU, but hardware.accelerator=cpu: set "
        "model.spec.kernels=null"]
    assert config_problems(compose("train", overrides=["model=phi3v", "model.spec.kernels=liger"])) == []


# ---- the fused loss seam: the model computes the training loss without logits ----------------------
def torch_fused(hidden, weight, target, reduction):
    """liger_fused_linear_cross_entropy's contract, in PyTorch (for the CPU)."""
    return F.cross_entropy(F.linear(hidden, weight).float(), target, reduction=reduction)


@pytest.fixture
def fake_liger(monkeypatch):
    """`liger_kernel.transformers.functional` with PyTorch's lm_head + cross-entropy: kernels.py's own
    logic (supervised positions, sum or mean, empty batches) runs on the CPU."""
    module = types.ModuleType("liger_kernel.transformers.functional")
    module.liger_fused_linear_cross_entropy = lambda hidden, weight, target, reduction: torch_fused(
        hidden, weight, target, reduction)
    monkeypatch.setitem(sys.modules, "liger_kernel.transformers.functional", module)


def test_linear_cross_entropy_is_the_models_loss_without_logits(batch, fake_liger):
    model = load_base_model(SPEC)
    labels = batch["labels"]
    window = logits_window(labels)
    eager = model(**batch, logits_to_keep=window)
    sums, tokens = per_sample_loss(eager.logits, labels[:, -window:])
    model.linear_cross_entropy = linear_cross_entropy  # what apply_kernels sets for liger
    fused = model(**batch, logits_to_keep=window, num_items_in_batch=1)
    assert fused.logits is None
    torch.testing.assert_close(fused.loss, sums.sum(), rtol=1e-6, atol=1e-5)
    torch.testing.assert_close(model(**batch).loss, eager.loss, rtol=1e-6, atol=1e-6)  # the mean, as before
    with torch.no_grad():  # evaluation and generation never take the fused path: they need the logits
        assert model(**batch, logits_to_keep=window).logits is not None
    unsupervised = torch.full_like(labels, IGNORE_INDEX)
    empty = model(**{**batch, "labels": unsupervised}, logits_to_keep=window, num_items_in_batch=1).loss
    empty.backward()
    assert empty.item() == 0.0 and model.lm_head.weight.grad is not None  # a graph through every weight
    assert int(tokens.sum()) == int((labels[:, 1:] != IGNORE_INDEX).sum())


def test_training_step_takes_the_models_fused_loss(batch, processor, fake_liger, monkeypatch):
    """The step asks the model for the summed loss: with fused kernels it gets it without logits."""
    from test_training_units import FakeTrainer, training_batch

    def step(fused: bool):
        module = Phi3VLitModule(
            spec=SPEC, lora=LoraSpec(r=4, dropout=0.0), optimizer=partial(torch.optim.AdamW, lr=1e-3),
            scheduler=None, processor=processor, task=TaskSpec(), evaluation=EvalSpec(),
        )
        torch.manual_seed(0)
        module.configure_model()
        if fused:
            module.model.get_base_model().linear_cross_entropy = linear_cross_entropy
        monkeypatch.setattr(module, "log", lambda *a, **k: None)
        loss = module.training_step(training_batch(batch, [True, True]), 0)
        loss.backward()
        return loss, {n: p.grad for n, p in module.named_parameters() if p.requires_grad}

    monkeypatch.setattr(Phi3VLitModule, "trainer", property(lambda self: FakeTrainer()))
    (eager, eager_grads), (fused, fused_grads) = step(False), step(True)
    torch.testing.assert_close(fused, eager, rtol=1e-6, atol=1e-6)
    for name, grad in eager_grads.items():
        torch.testing.assert_close(fused_grads[name], grad, rtol=1e-5, atol=1e-7)


# ---- on a GPU: Liger against PyTorch --------------------------------------------------------------
SHALLOW = {"num_hidden_layers": 2, "vision_config": {**CLIP_VIT_L_14_336, "num_hidden_layers": 2}}
RECIPE = LoraSpec(r=32, alpha=64, dropout=0.0, train_projector=True)  # the recipe's LoRA, no dropout draws


def real_width_step(kernels: str | None, checkpointing: bool | str = False) -> tuple[torch.Tensor, dict]:
    """(loss, LoRA and projector gradients) of one bf16 training step of random:phi3v at depth 2."""
    base = build_random_model("random:phi3v", seed=0, dtype=torch.bfloat16, device="cuda", **SHALLOW)
    if kernels:
        kernels_module_apply(base, kernels)
    if checkpointing:
        options, offload = checkpoint_options(checkpointing)
        base.activation_checkpointing_enable(options, offload=offload)
    torch.manual_seed(0)
    model = apply_lora(base, RECIPE)
    for name, parameter in model.named_parameters():
        if "lora_B" in name:  # PEFT starts B at zero, where A's gradient is zero too: make both non-trivial
            torch.nn.init.normal_(parameter, std=0.02)
    cast_lora_inputs(model, False)  # as training under bf16 autocast does
    processor = load_processor(ModelSpec(name_or_path="random:phi3v", num_crops=4))
    photo = Image.effect_noise((1000, 1000), 64).convert("RGB")
    encoded = processor([TaskSpec().prompt()] * 2, [photo] * 2, answers=ANSWERS, padding_side="right")
    encoded = {key: value.cuda() for key, value in encoded.items()}
    window = logits_window(encoded["labels"])
    model.train()
    with torch.autocast("cuda", dtype=torch.bfloat16):
        output = model(**encoded, logits_to_keep=window, num_items_in_batch=1)
    output.loss.backward()
    assert (output.logits is None) == (kernels is not None)
    return output.loss.detach().float(), {n: p.grad.float() for n, p in model.named_parameters() if p.requires_grad}


def kernels_module_apply(model, name):
    kernels.apply_kernels(model, name)
    layer = model.model.layers[0]
    assert type(layer.mlp).__name__ == "LigerPhi3SwiGLUMLP" and type(layer.input_layernorm).__name__ == "LigerRMSNorm"


@pytest.mark.skipif(not GPU, reason="needs a CUDA device and liger-kernel (pip install -e .[gpu])")
@pytest.mark.parametrize("checkpointing", [False, True, "selective", "offload"])
def test_liger_matches_pytorch_within_bf16_on_the_real_width_model(checkpointing):
    loss, grads = real_width_step(None)
    liger_loss, liger_grads = real_width_step("liger", checkpointing)
    assert abs(liger_loss.item() - loss.item()) <= 2e-2 * abs(loss.item())
    assert liger_grads.keys() == grads.keys()
    for name, grad in grads.items():
        difference = (liger_grads[name] - grad).norm() / grad.norm().clamp(min=1e-12)
        assert difference < 5e-2, f"{name}: relative difference {difference:.3g}"


@pytest.mark.e2e
def test_train_py_refuses_liger_at_launch_on_a_machine_without_cuda(tmp_path):
    """hardware=auto passes the config check on any machine; the launch check then names the key
    before any data or model work."""
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    result = subprocess.run(
        [sys.executable, str(REPO / "train.py"), "model.spec.kernels=liger", "hardware=auto", "logger=none",
         f"hydra.run.dir={tmp_path}"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode != 0
    assert "model.spec.kernels=liger runs Triton kernels, which need a CUDA GPU" in result.stderr + result.stdout
    assert not (tmp_path / "splits.json").exists()  # stopped before the data


# ---- the swap itself, with Liger's modules played by PyTorch (no Triton here) ------------------------
class TorchRMSNorm(torch.nn.Module):
    """LigerRMSNorm's constructor and Phi-3's result."""

    def __init__(self, hidden_size, eps=1e-6):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.ones(hidden_size))
        self.variance_epsilon = eps

    def forward(self, x):
        variance = x.float().pow(2).mean(-1, keepdim=True)
        return self.weight * (x.float() * torch.rsqrt(variance + self.variance_epsilon)).to(x.dtype)


class TorchPhi3SwiGLUMLP(torch.nn.Module):
    """LigerPhi3SwiGLUMLP's constructor and result."""

    def __init__(self, config):
        super().__init__()
        self.gate_up_proj = torch.nn.Linear(config.hidden_size, 2 * config.intermediate_size, bias=False)
        self.down_proj = torch.nn.Linear(config.intermediate_size, config.hidden_size, bias=False)

    def forward(self, x):
        gate, up = self.gate_up_proj(x).chunk(2, dim=-1)
        return self.down_proj(F.silu(gate) * up)


@pytest.fixture
def torch_liger(monkeypatch):
    """A CUDA machine with liger-kernel installed, as far as kernels.py can tell, without Triton."""
    package = types.ModuleType("liger_kernel.transformers")
    package.LigerRMSNorm, package.LigerPhi3SwiGLUMLP = TorchRMSNorm, TorchPhi3SwiGLUMLP
    monkeypatch.setitem(sys.modules, "liger_kernel.transformers", package)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: object() if name == "liger_kernel" else real_find_spec(name, *a))
    swaps = []
    monkeypatch.setattr(kernels, "_swap_rope", lambda: swaps.append("rope"))  # process-wide: tested below
    return swaps


def test_liger_swap_keeps_the_weights_lora_targets_and_results(batch, torch_liger):
    eager_loss, eager_grads = lora_step(load_base_model(SPEC), batch)
    base = load_base_model(SPEC)
    layer = base.model.layers[0]
    native_norm, native_mlp = layer.input_layernorm, layer.mlp
    kernels.apply_kernels(base, "liger")
    assert torch_liger == ["rope"] and base.linear_cross_entropy is linear_cross_entropy
    assert isinstance(layer.input_layernorm, TorchRMSNorm) and layer.input_layernorm.weight is native_norm.weight
    assert isinstance(base.model.norm, TorchRMSNorm) and isinstance(layer.post_attention_layernorm, TorchRMSNorm)
    assert layer.input_layernorm.variance_epsilon == native_norm.variance_epsilon == 1e-5
    assert isinstance(layer.mlp, TorchPhi3SwiGLUMLP) and layer.mlp.gate_up_proj is native_mlp.gate_up_proj
    assert all(p.device.type == "cpu" for p in base.parameters())  # the meta-built MLP allocated nothing
    assert set(base.state_dict()) == set(load_base_model(SPEC).state_dict())  # checkpoints and adapters alike
    base.linear_cross_entropy = None  # the loss stays PyTorch's here (Liger's functional needs Triton)
    loss, grads = lora_step(base, batch)
    assert "model.layers.0.mlp.gate_up_proj.lora_A.default.weight" in {n.split("base_model.model.")[1] for n in grads}
    torch.testing.assert_close(loss, eager_loss, rtol=1e-6, atol=1e-6)
    for name, grad in eager_grads.items():
        torch.testing.assert_close(grads[name], grad, rtol=1e-5, atol=1e-6)


def lora_step(base, batch):
    torch.manual_seed(0)
    model = apply_lora(base, LoraSpec(r=4, dropout=0.0))
    model.train()
    loss = model(**batch).loss
    loss.backward()
    return loss.detach(), {n: p.grad for n, p in model.named_parameters() if p.requires_grad}


def test_rope_swap_runs_the_fused_kernel_on_cuda_tensors_only():
    calls = []
    rope = kernels.cuda_only(lambda *a, unsqueeze_dim: calls.append(("fused", unsqueeze_dim)),
                             lambda *a, unsqueeze_dim: calls.append(("native", unsqueeze_dim)))
    rope(torch.zeros(1), None, None, None)
    rope(types.SimpleNamespace(is_cuda=True), None, None, None, unsqueeze_dim=2)
    assert calls == [("native", 1), ("fused", 2)]
