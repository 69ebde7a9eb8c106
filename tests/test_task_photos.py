"""Several photos per item: question tags, photo and image-token caps, the bad-photo rule."""

from __future__ import annotations

import pytest

from phi3v.task import PhotoSpec, TaskSpec, image_tags, max_photo_tokens, question_for

pytestmark = pytest.mark.unit


def test_image_tags_and_the_one_tag_question():
    assert image_tags(1) == "<|image_1|>"
    assert image_tags(3) == "<|image_1|><|image_2|><|image_3|>"
    question = "<|image_1|>What is shown in this image?"
    assert question_for(question, 1) == question  # the seed's question, unchanged
    assert question_for(question, 2) == "<|image_1|><|image_2|>What is shown in this image?"
    assert question_for("Look: <|image_1|> what?", 3) == "Look: <|image_1|><|image_2|><|image_3|> what?"


def test_a_question_with_one_tag_per_photo_serves_that_count_only():
    question = "Front: <|image_1|> Back: <|image_2|> What is it?"
    assert question_for(question, 2) == question
    for count in (1, 3):
        with pytest.raises(ValueError, match=f"the question has 2 image tags but the item has {count} photos"):
            question_for(question, count)
    with pytest.raises(ValueError, match="at least one photo, got 0"):
        question_for("<|image_1|>What?", 0)
    assert TaskSpec(question=question).question_for(2) == question


def test_max_photo_tokens_bounds_every_image_size():
    from phi3v.modeling import Phi3VImageProcessor

    assert (max_photo_tokens(4), max_photo_tokens(16)) == (781, 2653)  # (n + 1) * (144 + 12) + 1
    processor = Phi3VImageProcessor(num_crops=4)
    sizes = [(w, h) for w in range(40, 3000, 97) for h in range(40, 3000, 89)]
    counts = [processor.num_image_tokens(w, h) for w, h in sizes if min(processor.hd_canvas_size(w, h)) > 0]
    assert max(counts) == 781  # reached (a 1 x 4 strip), never exceeded


def test_photo_caps_and_the_bad_photo_rule():
    drop, keep = PhotoSpec(max_per_item=2), PhotoSpec(max_per_item=2, bad_photo="keep_rest")
    assert drop.usable([True, True, True]) == (0, 1)  # the first two, in column order
    assert drop.usable([True, True, False]) == (0, 1)  # a bad photo past the cap is never used
    assert drop.usable([True, False, True]) is None  # one bad photo among those used drops the item
    assert drop.usable([]) is None
    assert keep.usable([True, False, True, True]) == (0, 2)  # the first two readable ones
    assert keep.usable([False, False]) is None
    assert PhotoSpec().usable([True] * 6) == (0, 1, 2, 3)  # default: four photos


def test_image_token_budget():
    assert PhotoSpec().within_budget([2509, 2653, 1921]) == 3  # no cap
    capped = PhotoSpec(max_image_tokens=5162)
    assert capped.within_budget([2509, 2653, 1921]) == 2  # 2509 + 2653 = 5162 fits exactly
    assert capped.within_budget([2509, 2654]) == 1
    assert PhotoSpec(max_image_tokens=2000).within_budget([2509]) == 0  # the first alone is too many: drop
    assert capped.within_budget([]) == 0


def test_photo_spec_problems_name_the_keys():
    with pytest.raises(ValueError) as raised:
        PhotoSpec(max_per_item=0, max_image_tokens=0, bad_photo="skip")
    assert str(raised.value).split("\n") == [
        "data.photos.max_per_item must be a whole number >= 1, got 0",
        "data.photos.max_image_tokens must be a whole number >= 1 or null, got 0",
        "data.photos.bad_photo must be one of drop_item, keep_rest, got 'skip'",
    ]
    for bad in (1.5, True):
        with pytest.raises(ValueError, match="max_per_item"):
            PhotoSpec(max_per_item=bad)
    PhotoSpec(max_per_item=1, max_image_tokens=1)  # both bounds allowed
