"""Tier 2: prompt handling of Phi3VProcessor — tags, errors, chat format, padding."""

from __future__ import annotations

import pytest
import torch
from golden_data import TINY_MODEL
from PIL import Image

from phi3v.modeling import Phi3VProcessor, chat_prompt, load_tokenizer

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def processor() -> Phi3VProcessor:
    return Phi3VProcessor.from_pretrained(TINY_MODEL, num_crops=4)


def image(width: int = 64, height: int = 48) -> Image.Image:
    return Image.new("RGB", (width, height), (10, 120, 200))


def test_chat_prompt_equals_the_checkpoint_template():
    tokenizer = load_tokenizer(TINY_MODEL)
    messages = [
        {"role": "system", "content": "You price products."},
        {"role": "user", "content": "<|image_1|>\nWhat is shown in this image?"},
    ]
    expected = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert chat_prompt(messages) == expected
    assert chat_prompt(messages[1:]) == "<|user|>\n<|image_1|>\nWhat is shown in this image?<|end|>\n<|assistant|>\n"


def test_bos_after_every_image_block(processor):
    ids = processor("<|image_1|>a<|image_2|>", [image(), image()])["input_ids"][0].tolist()
    # chunks "", "a", "" each tokenized with BOS: [BOS] img1 [BOS a] img2 [BOS]
    assert ids[0] == 1 and ids[-1] == 1
    first_end = ids.index(-2) - 1
    assert ids[first_end] != -1 and -1 in ids
    after_first = ids[ids.index(-1) + ids.count(-1)]
    assert after_first == 1


def test_image_number_maps_to_its_own_image(processor):
    """<|image_2|> may come first in the text; its positions take image 2's token count."""
    small, wide = image(50, 50), image(1000, 100)
    ids = processor("<|image_2|> then <|image_1|>", [small, wide])["input_ids"][0]
    counts = processor.image_processor([small, wide])["num_img_tokens"]
    assert int((ids == -1).sum()) == counts[0] and int((ids == -2).sum()) == counts[1]
    assert int((ids < 0).nonzero()[0]) < int((ids == -1).nonzero()[0])  # image 2's block comes first


@pytest.mark.parametrize(
    ("prompt", "images", "message"),
    [
        ("<|image_1|><|image_2|>x", 1, "prompt 0 has 2 image tags but 1 images"),
        ("<|image_1|><|image_3|>x", 2, r"must be <\|image_1\|>..<\|image_n\|>"),
        ("<|image_1|><|image_1|>x", 2, r"each once"),
        ("<|image_1|>x", 2, "2 images given but the prompts have only 1 image tags"),
        ("no tags", 1, "1 images given but the prompts have only 0 image tags"),
    ],
)
def test_tag_and_image_count_errors(processor, prompt, images, message):
    with pytest.raises(ValueError, match=message):
        processor(prompt, [image() for _ in range(images)])


def test_num_crops_below_one_is_an_error():
    with pytest.raises(ValueError, match="num_crops"):
        Phi3VProcessor.from_pretrained(TINY_MODEL, num_crops=0)


def test_zero_pixel_image_is_an_error(processor):
    with pytest.raises(ValueError):
        processor("<|image_1|>x", [Image.new("RGB", (0, 10))])


@pytest.mark.parametrize("mode", ["L", "LA", "P", "RGBA", "CMYK", "I;16", "F"])
def test_every_pil_mode_is_accepted(processor, mode):
    batch = processor("<|image_1|>x", [Image.new(mode, (40, 30))])
    assert batch["pixel_values"].shape == (1, 5, 3, 336, 336)
    assert torch.isfinite(batch["pixel_values"]).all()


def test_padding_sides_and_mask(processor):
    prompts = [
        "<|user|>\nshort<|end|>\n<|assistant|>\n",
        "<|user|>\n<|image_1|>\nlonger prompt<|end|>\n<|assistant|>\n",
    ]
    right = processor(prompts, [[], [image()]])
    left = processor(prompts, [[], [image()]], padding_side="left")
    n = int(right["attention_mask"][0].sum())
    pad = processor.pad_token_id
    assert right["input_ids"][0, n:].eq(pad).all() and right["attention_mask"][0, n:].eq(0).all()
    assert left["input_ids"][0, -n:].tolist() == right["input_ids"][0, :n].tolist()
    assert left["attention_mask"][0, :-n].eq(0).all()
    assert torch.equal(left["input_ids"][1], right["input_ids"][1])  # the longest row has no padding


def test_answers_must_match_prompts(processor):
    with pytest.raises(ValueError, match="2 prompts but 1 answers"):
        processor(["a", "b"], answers=["x"])


def test_batch_decode_skips_image_positions(processor):
    batch = processor("<|user|>\n<|image_1|>\nHi<|end|>", [image()])
    assert processor.batch_decode(batch["input_ids"]) == [processor.decode(batch["input_ids"][0])]
    assert "Hi" in processor.decode(batch["input_ids"][0])


def test_sequence_lengths_equal_the_rows_tokenize_builds(processor):
    """Counted from image sizes alone, the lengths a sampler groups by are those of the real rows, also
    for answers that change how the prompt's end tokenizes (leading space, digits, no separator)."""
    prompt = chat_prompt([{"role": "user", "content": "<|image_1|>What is shown in this image?"}])
    sizes = [(64, 48), (1000, 100), (336, 900), (5, 700)]
    answers = ["Product: A, Category: B, Full Price: 1250.0", " leading space", "", "1,299.99 USD\nsecond line"]
    counts = processor.image_processor([image(w, h) for w, h in sizes])["num_img_tokens"]
    assert len(set(counts)) == len(counts)  # four different image token counts
    rows = processor.tokenize([prompt] * 4, [[n] for n in counts], answers)
    assert processor.sequence_lengths(prompt, sizes, answers) == rows["attention_mask"].sum(1).tolist()
    prompts_only = processor.tokenize([prompt] * 4, [[n] for n in counts])
    assert processor.sequence_lengths(prompt, sizes) == prompts_only["attention_mask"].sum(1).tolist()
    with pytest.raises(ValueError, match="the prompt has 2 image tags but row 0 has 1 image sizes"):
        processor.sequence_lengths("<|image_1|><|image_2|>", sizes)
    with pytest.raises(ValueError, match="needs a prompt with image tags, got none"):
        processor.sequence_lengths("What?", sizes)
    with pytest.raises(ValueError, match="4 image sizes but 1 answers"):
        processor.sequence_lengths(prompt, sizes, answers[:1])
