"""Tier 2: the tiny preset, input validation, activation checkpointing, dtypes, attention choices."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from phi3v.modeling import (
    IGNORE_INDEX,
    Phi3VForCausalLM,
    Phi3VProcessor,
    build_tiny_model,
    load_tokenizer,
    preset_dir,
    tiny_config,
)

pytestmark = pytest.mark.unit

PROMPT = "<|user|>\n<|image_1|>\nWhat is shown in this image?<|end|>\n<|assistant|>\n"
ANSWER = "Product: Check Wool Scarf, Category: Scarves, Full Price: 490.00"


@pytest.fixture(scope="module")
def processor() -> Phi3VProcessor:
    return Phi3VProcessor.from_pretrained(preset_dir("tiny"))


@pytest.fixture(scope="module")
def model() -> Phi3VForCausalLM:
    return build_tiny_model(seed=0).eval()


@pytest.fixture(scope="module")
def batch(processor):
    image = Image.new("RGB", (400, 300), (200, 30, 40))
    return processor([PROMPT, PROMPT], [image, image.rotate(90, expand=True)], answers=[ANSWER, "Product: x"])


def test_the_package_loads_each_name_from_its_module():
    """phi3v.modeling imports nothing heavy itself (config composition reads model_spec.py through it);
    every exported name still resolves, and a wrong one fails naming it."""
    import phi3v.modeling as modeling
    from phi3v.modeling.processing import Phi3VProcessor as defined

    assert modeling.Phi3VProcessor is defined and set(modeling.__all__) <= set(dir(modeling))
    assert all(getattr(modeling, name) is not None for name in modeling.__all__)
    with pytest.raises(AttributeError, match="has no attribute 'Phi3VNothing'"):
        modeling.Phi3VNothing  # noqa: B018


def test_tiny_preset_is_consistent_and_deterministic():
    config = tiny_config()
    tokenizer = load_tokenizer(preset_dir("tiny"))
    assert config.vocab_size >= len(tokenizer)
    assert config.pad_token_id == tokenizer.pad_token_id == tokenizer.convert_tokens_to_ids("<|endoftext|>")
    assert config.eos_token_id == tokenizer.eos_token_id
    assert config.bos_token_id == tokenizer.bos_token_id == 1
    a, b, c = build_tiny_model(seed=3), build_tiny_model(seed=3), build_tiny_model(seed=4)
    assert a.state_dict().keys() == b.state_dict().keys()
    for (name, pa), pb in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(pa, pb), name
        assert torch.isfinite(pa).all(), name
    assert not torch.equal(a.lm_head.weight, c.lm_head.weight)


def test_tiny_tokenizer_asset_is_reproducible(tmp_path):
    from phi3v.assets.make_tiny_tokenizer import write_tiny_tokenizer

    write_tiny_tokenizer(tmp_path)
    assert (tmp_path / "tokenizer.json").read_text() == (preset_dir("tiny") / "tokenizer.json").read_text()


def test_labels_supervise_only_answer_and_end(processor, batch):
    end = processor.end_token_id
    assistant = processor.tokenizer.convert_tokens_to_ids("<|assistant|>")
    images = [Image.new("RGB", (400, 300)), Image.new("RGB", (300, 400))]  # the batch's image sizes
    for row, answer in enumerate([ANSWER, "Product: x"]):
        labels = batch["labels"][row]
        supervised = labels[labels != IGNORE_INDEX].tolist()
        assert supervised[-1] == end
        assert processor.decode(supervised, skip_special_tokens=False) == answer + "<|end|>"  # no <|assistant|>
        # exact ids: -100 over the prompt (as tokenized alone, ending in <|assistant|>), then the sequence's own
        # ids up to its last real token, then -100 over the padding
        start = processor([PROMPT], [images[row]])["input_ids"].shape[1]
        length = int(batch["attention_mask"][row].sum())
        ids = batch["input_ids"][row]
        assert ids[start - 1] == assistant
        expected = [IGNORE_INDEX] * start + ids[start:length].tolist() + [IGNORE_INDEX] * (len(ids) - length)
        assert labels.tolist() == expected
        assert (labels[ids < 0] == IGNORE_INDEX).all()  # image positions
        assert (labels[batch["attention_mask"][row] == 0] == IGNORE_INDEX).all()  # padding
    short = batch["labels"][1][batch["labels"][1] != IGNORE_INDEX].tolist()
    assert processor.tokenizer.convert_ids_to_tokens(short) == ["▁Product:▁", "x", "<|end|>"]  # the tiny vocab


def test_forward_loss_backward_and_generate(model, processor, batch):
    out = model(**batch)
    assert out.logits.shape[:2] == batch["input_ids"].shape
    assert torch.isfinite(out.loss)
    out.loss.backward()
    embedding = model.model.vision_embed_tokens
    assert embedding.img_projection[0].weight.grad.abs().sum() > 0  # the image reaches the loss
    assert embedding.sub_GN.grad.abs().sum() > 0 and embedding.glb_GN.grad.abs().sum() > 0
    model.zero_grad()
    prompt = processor(PROMPT, Image.new("RGB", (50, 80)))
    with torch.no_grad():
        tokens = model.generate(**prompt, max_new_tokens=5, do_sample=False, eos_token_id=None)
    assert tokens.shape == (1, prompt["input_ids"].shape[1] + 5)


def test_text_only_prompt(model, processor):
    batch = processor("<|user|>\nHello<|end|>\n<|assistant|>\n")
    assert "pixel_values" not in batch and (batch["input_ids"] >= 0).all()
    with torch.no_grad():
        assert torch.isfinite(model(**batch).logits).all()


def test_image_positions_without_pixels_is_an_error(model, processor):
    batch = processor(PROMPT, Image.new("RGB", (64, 64)))
    with pytest.raises(ValueError, match="pixel_values/image_sizes were not given"):
        model(input_ids=batch["input_ids"])


def test_count_mismatch_names_both_numbers(model, processor):
    batch = processor(PROMPT, Image.new("RGB", (64, 64)))
    ids = batch["input_ids"].clone()
    first = int((ids[0] < 0).nonzero()[0])
    ids[0, first] = 5  # one image position fewer than the image has tokens
    with pytest.raises(ValueError, match=r"\d+ image positions in input_ids but \d+ image feature tokens"):
        model(input_ids=ids, pixel_values=batch["pixel_values"], image_sizes=batch["image_sizes"])


def test_pixel_values_for_fewer_images_than_referenced(model, processor):
    two = processor("<|image_1|><|image_2|>x", [Image.new("RGB", (64, 64))] * 2)
    with pytest.raises(ValueError, match="reference 2 images but pixel_values holds 1"):
        model(
            input_ids=two["input_ids"], pixel_values=two["pixel_values"][:1], image_sizes=two["image_sizes"][:1]
        )


def test_activation_checkpointing_covers_both_towers_and_keeps_gradients(batch):
    plain, checkpointed = build_tiny_model(seed=1), build_tiny_model(seed=1)
    checkpointed.activation_checkpointing_enable()
    layers = list(checkpointed.model.layers) + list(
        checkpointed.model.vision_embed_tokens.img_processor.vision_model.encoder.layers
    )
    assert all(layer.gradient_checkpointing for layer in layers)
    for m in (plain, checkpointed):
        m.train()
        m(**batch).loss.backward()
    for (name, p), q in zip(plain.named_parameters(), checkpointed.parameters()):
        if p.grad is not None:
            torch.testing.assert_close(p.grad, q.grad, atol=1e-6, rtol=1e-5, msg=name)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_forward_and_generate(dtype, batch, processor):
    reference = build_tiny_model(seed=0).eval()
    half = build_tiny_model(seed=0, dtype=dtype).eval()
    with torch.no_grad():
        expected = reference(**batch).loss
        out = half(**batch)
    assert out.logits.dtype == dtype
    assert abs(out.loss.float().item() - expected.item()) < 0.05
    with torch.no_grad():
        prompt = processor(PROMPT, Image.new("RGB", (64, 64)))
        assert half.generate(**prompt, max_new_tokens=3, do_sample=False).shape[1] >= prompt["input_ids"].shape[1]


def test_attention_implementations_agree(batch):
    eager = build_tiny_model(seed=2).eval()
    eager.set_attn_implementation("eager")
    sdpa = build_tiny_model(seed=2).eval()
    sdpa.set_attn_implementation("sdpa")
    with torch.no_grad():
        torch.testing.assert_close(eager(**batch).logits, sdpa(**batch).logits, atol=1e-4, rtol=1e-4)


def test_padding_crops_are_never_encoded(model, processor):
    """num_crops=4 pads every image to 5 crops; CLIP must see only the 1 + h*w real ones."""
    seen = []
    tower = model.model.vision_embed_tokens.img_processor
    handle = tower.register_forward_hook(lambda module, args, output: seen.append(args[0].shape[0]))
    try:
        wide, square = Image.new("RGB", (900, 300)), Image.new("RGB", (300, 300))
        batch = processor("<|image_1|><|image_2|>x", [wide, square])
        with torch.no_grad():
            model(**batch)
    finally:
        handle.remove()
    rows_cols = (batch["image_sizes"] // 336).tolist()  # wide: 1x3 crops + global, square: 2x2 + global
    assert rows_cols == [[1, 3], [2, 2]]
    assert batch["pixel_values"].shape[1] == 5
    assert seen == [(1 + 3) + (1 + 4)]


def test_clip_reads_the_crops_in_place_when_every_crop_is_real(model, processor):
    """num_crops=1 fills every crop slot (1x1 canvas + global): CLIP gets a view of pixel_values, no copy,
    and the same features as each image encoded alone."""
    one_crop = Phi3VProcessor.from_pretrained(preset_dir("tiny"), num_crops=1)
    batch = one_crop("<|image_1|>x", [Image.new("RGB", (300, 200), "red")])
    two = {key: torch.cat([value, value]) for key, value in batch.items()}  # two rows, one image each
    two["pixel_values"] = torch.cat([batch["pixel_values"], batch["pixel_values"] * 0.5])
    seen = []
    tower = model.model.vision_embed_tokens.img_processor
    handle = tower.register_forward_hook(lambda module, args, output: seen.append((args[0].data_ptr(), output)))
    try:
        with torch.no_grad():
            model(**two)
            model(**{**batch, "pixel_values": batch["pixel_values"] * 0.5})
    finally:
        handle.remove()
    assert two["pixel_values"].shape[1] == 2 and seen[0][0] == two["pixel_values"].data_ptr()
    assert torch.equal(seen[0][1][2:], seen[1][1])  # the second image's features, bit for bit
