"""Tier 2: adapters trained on a quantized (QLoRA) tiny base: exported as plain PEFT adapters, reloaded
onto the quantized base for inference (predict, evaluation) and merged into the UNQUANTIZED base.
"""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch
from omegaconf import OmegaConf
from peft import PeftModel
from test_export import TEMPLATE, adapted_model, logits, product_image

from phi3v.inference import greedy_answers, load_for_inference
from phi3v.modeling import Phi3VForCausalLM, Phi3VProcessor
from phi3v.modeling.model_spec import ModelSpec, load_base_model, load_processor
from phi3v.modeling.quantization import QUANTIZATIONS, is_quantized_model
from phi3v.shipping.adapter import export_adapter

pytestmark = [pytest.mark.unit, pytest.mark.usefixtures("one_thread")]


# ---- export, inference, merge ----------------------------------------------------------------
@pytest.fixture(scope="module", params=QUANTIZATIONS)
def exported(request, tmp_path_factory):
    spec = replace(ModelSpec(), quantization=request.param)
    model = adapted_model(spec)  # LoRA r=8 + projector, trained tensors perturbed at random
    out = export_adapter(model, load_processor(spec), spec, TEMPLATE, tmp_path_factory.mktemp("qlora") / "adapter")
    return request.param, model, out


@pytest.fixture(scope="module")
def generation_batch(exported):
    processor = Phi3VProcessor.from_pretrained(exported[2], num_crops=1, padding_side="left")
    return processor, processor([TEMPLATE.prompt()] * 2, [product_image("red"), product_image("navy", (180, 420))])


def test_adapter_reloads_onto_a_quantized_base_with_identical_greedy_answers(exported, generation_batch):
    kind, model, out = exported
    processor, batch = generation_batch
    assert ModelSpec.load(out).quantization == kind
    loaded, loaded_processor, _ = load_for_inference(out)
    assert isinstance(loaded, PeftModel) and is_quantized_model(loaded)
    assert torch.equal(logits(loaded, batch), logits(model, batch))
    answers = greedy_answers(loaded, loaded_processor, batch, max_new_tokens=8)
    assert answers == greedy_answers(model, processor, batch, max_new_tokens=8)
    base = load_base_model(replace(ModelSpec(), quantization=kind)).eval()
    assert not torch.allclose(logits(base, batch), logits(model, batch), atol=1e-3)  # the adapter matters


def test_predict_command_runs_on_the_quantized_base(exported, tmp_path, capsys):
    from phi3v.predict import predict_image
    from phi3v.predict import run as predict_command

    kind, model, out = exported
    path = tmp_path / "photo.png"
    product_image("navy").save(path)
    cfg = OmegaConf.create({"adapter": str(out), "image": str(path), "dtype": None, "device": "cpu",
                            "max_new_tokens": 8})
    predict_command(cfg)
    expected, _ = predict_image(model, Phi3VProcessor.from_pretrained(out, padding_side="left"), TEMPLATE, path, 8)
    assert f"answer: {json.dumps(expected, ensure_ascii=False)}\n" in capsys.readouterr().out  # printed quoted


def test_merge_folds_the_adapter_into_the_unquantized_base(exported, generation_batch, tmp_path, capsys):
    """Merged logits equal the adapter on the unquantized float32 base up to float32 rounding of the
    folded weights (measured 6e-7; tolerance 1e-5), and differ from the adapter on the quantized
    base by the quantization error (measured 0.09 nf4, 0.009 int8; > 1e-3): the merge did not fold
    into the quantized weights."""
    from phi3v.export import run as export_command

    kind, model, out = exported
    _, batch = generation_batch
    cfg = OmegaConf.create({"adapter": str(out), "out": str(tmp_path / "merged"), "merge": True})
    merged_dir = export_command(cfg)
    assert f"trained on a {kind}-quantized base; it is merged into the unquantized float32" in capsys.readouterr().out
    merged = Phi3VForCausalLM.from_pretrained(merged_dir).eval()
    assert not is_quantized_model(merged)
    assert ModelSpec.load(merged_dir).quantization is None
    unquantized = PeftModel.from_pretrained(load_base_model(ModelSpec()), out).eval()
    expected = logits(unquantized, batch)
    torch.testing.assert_close(logits(merged, batch), expected, atol=1e-5, rtol=0)
    assert (logits(model, batch) - expected).abs().max() > 1e-3
    loaded, _, _ = load_for_inference(merged_dir)  # the merged export rebuilds unquantized from its spec
    assert not is_quantized_model(loaded) and torch.equal(logits(loaded, batch), logits(merged, batch))

