"""Several photos per item: the question's `<|image_k|>` tags, and how many photos an item may bring.

Phi-3-V and Phi-3.5-V take several images per prompt, each written `<|image_k|>` (k = 1..n, each
once, in order; phi3v.modeling.processing checks the counts). A question holds either one tag,
`<|image_1|>`, which stands for all of an item's photos (expanded to `<|image_1|><|image_2|>...` in
place: items may have different numbers of photos), or one tag per photo, for catalogues whose
items all have exactly that many (e.g. "Front: <|image_1|> Back: <|image_2|> ...").

Every photo costs image tokens: at most `max_photo_tokens(num_crops)` (2,653 at num_crops 16, 781 at 4),
so `PhotoSpec` caps the photos per item and, optionally, their tokens together.

Its config is `data.photos` (DataSpec.photos; applied by phi3v.data.photo_files when preparing and
phi3v.data.photo_tokens at setup), next to the catalogue's image column(s):

    photos:
      max_per_item: 4          # photos used per item, in column order; each costs up to 2,653 tokens at num_crops 16
      max_image_tokens: null   # cap on one item's image tokens together (null = none): photos past it are left out
      bad_photo: drop_item     # an unreadable photo drops its item (drop_item) or only itself (keep_rest)
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from phi3v.modeling.image_geometry import CROP, num_image_tokens_for

IMAGE_TAG = re.compile(r"<\|image_(\d+)\|>")
BAD_PHOTO_RULES = ("drop_item", "keep_rest")


def image_tags(count: int) -> str:
    """`<|image_1|>...<|image_n|>`, adjacent (one photo: exactly the seed's `<|image_1|>`)."""
    return "".join(f"<|image_{k}|>" for k in range(1, count + 1))


def question_problems(question: str, key: str) -> list[str]:
    """What is wrong with a question's image tags: they must be <|image_1|>..<|image_n|>, each once, in order."""
    numbers = [int(n) for n in IMAGE_TAG.findall(question)]
    if numbers == list(range(1, len(numbers) + 1)) and numbers:
        return []
    return [f"{key} must hold <|image_1|> (standing for all of an item's photos) or <|image_1|>..<|image_n|> "
            f"once each, in order; got {[f'<|image_{n}|>' for n in numbers] or 'no image tag'} in {question!r}"]


def question_for(question: str, count: int) -> str:
    """The question for an item with `count` photos (see the module docstring).

    A single `<|image_1|>` becomes `count` adjacent tags; a question with n tags serves items of n photos
    only: ValueError with both numbers otherwise.
    """
    tags = len(IMAGE_TAG.findall(question))
    if count < 1:
        raise ValueError(f"an item needs at least one photo, got {count}")
    if tags == 1:
        return question.replace("<|image_1|>", image_tags(count))
    if tags != count:
        raise ValueError(
            f"the question has {tags} image tags but the item has {count} photos: write the question with the "
            "single tag <|image_1|> to ask about any number of photos"
        )
    return question


def max_photo_tokens(num_crops: int) -> int:
    """The most image tokens one photo can take: a strip of `num_crops` crops (1 x n) and the global view,
    (num_crops + 1) * 144 tokens plus a separator per token row (phi3v.modeling.image_geometry)."""
    return num_image_tokens_for(CROP, CROP * num_crops)


@dataclass(frozen=True)
class PhotoSpec:
    """How many of an item's photos the model sees, and what an unreadable one does.

    Args:
        max_per_item: photos used per item, the first ones in column order.
        max_image_tokens: cap on the image tokens of one item's photos together; photos past it are left
            out, an item whose first photo alone exceeds it is dropped. None = no cap. Applied at setup,
            once the processor (num_crops) is known.
        bad_photo: "drop_item" drops an item when one of its first `max_per_item` photos is unreadable;
            "keep_rest" keeps the first `max_per_item` readable photos (dropped when none is).
    """

    max_per_item: int = 4
    max_image_tokens: int | None = None
    bad_photo: str = "drop_item"

    def __post_init__(self) -> None:
        problems = self.problems("data.photos")
        if problems:
            raise ValueError("\n".join(problems))

    def problems(self, key: str) -> list[str]:
        problems = []
        if isinstance(self.max_per_item, bool) or not isinstance(self.max_per_item, int) or self.max_per_item < 1:
            problems.append(f"{key}.max_per_item must be a whole number >= 1, got {self.max_per_item!r}")
        if self.max_image_tokens is not None and (
            isinstance(self.max_image_tokens, bool) or not isinstance(self.max_image_tokens, int)
            or self.max_image_tokens < 1
        ):
            problems.append(f"{key}.max_image_tokens must be a whole number >= 1 or null, got {self.max_image_tokens}")
        if self.bad_photo not in BAD_PHOTO_RULES:
            problems.append(f"{key}.bad_photo must be one of {', '.join(BAD_PHOTO_RULES)}, got {self.bad_photo!r}")
        return problems

    def usable(self, readable: Sequence[bool]) -> tuple[int, ...] | None:
        """Indices of the photos to use, in order, given which of an item's photos are readable; None = drop it."""
        if self.bad_photo == "drop_item":
            first = range(min(len(readable), self.max_per_item))
            return tuple(first) if first and all(readable[i] for i in first) else None
        kept = tuple(i for i, ok in enumerate(readable) if ok)[: self.max_per_item]
        return kept or None

    def within_budget(self, token_counts: Sequence[int]) -> int:
        """How many of the leading photos (token counts in order) fit `max_image_tokens` together; 0 = none."""
        if self.max_image_tokens is None:
            return len(token_counts)
        total = 0
        for kept, tokens in enumerate(token_counts):
            total += tokens
            if total > self.max_image_tokens:
                return kept
        return len(token_counts)
