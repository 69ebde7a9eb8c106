"""Phi3VProcessor: prompts with `<|image_N|>` tags + PIL images -> model inputs, batched.

Tokenization follows the original exactly: the prompt is split at the image tags, every text chunk
is tokenized on its own *with* BOS (so a BOS also follows each image block), and image N occupies
as many positions as it has feature tokens, each holding the id -N. Unlike the original, several
prompts are processed at once and padded, and answers can be appended with labels that supervise
only the answer and its `<|end|>`.
"""

from __future__ import annotations

import numbers
import os
import re
from collections.abc import Sequence
from pathlib import Path

import torch
from PIL import Image
from transformers import BatchFeature, PreTrainedTokenizerBase

from .hub import resolve_snapshot
from .image_processing import Phi3VImageProcessor
from .modeling import IGNORE_INDEX
from .tokenizer import END_OF_TURN, chat_prompt, load_tokenizer

IMAGE_TAG = re.compile(r"<\|image_(\d+)\|>")
PROCESSOR_FILES = ["preprocessor_config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"]


class Phi3VProcessor:
    """Tokenizer + HD image processor of Phi-3-Vision.

    Args:
        image_processor: the HD transform (`num_crops` lives there).
        tokenizer: a fast tokenizer loaded verbatim from the checkpoint's tokenizer.json.
        padding_side: "right" for training batches, "left" for batched generation.
    """

    def __init__(
        self,
        image_processor: Phi3VImageProcessor,
        tokenizer: PreTrainedTokenizerBase,
        padding_side: str = "right",
    ):
        self.image_processor = image_processor
        self.tokenizer = tokenizer
        self.padding_side = _check_side(padding_side)

    @classmethod
    def from_pretrained(
        cls,
        path_or_id: str | os.PathLike,
        num_crops: int | None = None,
        padding_side: str = "right",
        revision: str | None = None,
        cache_dir: str | os.PathLike | None = None,
        **hub_kwargs,
    ) -> Phi3VProcessor:
        """Load from a local snapshot directory or a hub id (cached copies work with HF_HUB_OFFLINE=1).

        `token` and `local_files_only` go to the hub; `trust_remote_code` (passed by AutoProcessor)
        is accepted and ignored: phi3v never runs remote code.
        """
        for ignored in ("trust_remote_code", "_from_auto"):  # AutoProcessor bookkeeping
            hub_kwargs.pop(ignored, None)
        unknown = sorted(set(hub_kwargs) - {"token", "local_files_only"})
        if unknown:
            raise TypeError(f"Phi3VProcessor.from_pretrained got unexpected arguments {unknown}")
        directory = resolve_snapshot(
            path_or_id, PROCESSOR_FILES, revision=revision, cache_dir=cache_dir, **hub_kwargs
        )
        overrides = {} if num_crops is None else {"num_crops": num_crops}
        image_processor = Phi3VImageProcessor.from_pretrained(directory, **overrides)
        return cls(image_processor, load_tokenizer(directory), padding_side=padding_side)

    def save_pretrained(self, directory: str | os.PathLike) -> None:
        Path(directory).mkdir(parents=True, exist_ok=True)
        self.image_processor.save_pretrained(directory)
        self.tokenizer.save_pretrained(os.fspath(directory))

    # ---- ids -------------------------------------------------------------------------------

    @property
    def pad_token_id(self) -> int:
        return self.tokenizer.pad_token_id

    @property
    def end_token_id(self) -> int:
        """Id of `<|end|>`, the token that ends an assistant turn (the stop token for generation)."""
        return self.tokenizer.convert_tokens_to_ids(END_OF_TURN)

    def chat_prompt(self, messages: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
        return chat_prompt(messages, add_generation_prompt)

    def decode(self, ids: Sequence[int] | torch.Tensor, skip_special_tokens: bool = True) -> str:
        ids = [i for i in (ids.tolist() if isinstance(ids, torch.Tensor) else ids) if i >= 0]
        return self.tokenizer.decode(ids, skip_special_tokens=skip_special_tokens)

    def batch_decode(self, sequences: torch.Tensor | Sequence, skip_special_tokens: bool = True) -> list[str]:
        return [self.decode(s, skip_special_tokens) for s in sequences]

    # ---- processing -----------------------------------------------------------------------

    def __call__(
        self,
        text: str | list[str],
        images: Image.Image | list | None = None,
        answers: str | list[str] | None = None,
        padding_side: str | None = None,
        return_tensors: str | None = "pt",
    ) -> BatchFeature:
        """Tokenize prompts with their images, pad them into one batch.

        Args:
            text: one prompt or a list of prompts; image N of a prompt is written `<|image_N|>`.
            images: the images in prompt order, either one flat list (prompt 1's images first) or
                one list per prompt. None for text-only prompts.
            answers: optional assistant answers; each is appended after its prompt followed by
                `<|end|>`, and `labels` supervise exactly those tokens (everything else -100).
            padding_side: overrides the processor's side for this call ("left" for generation).

        Returns:
            input_ids, attention_mask (batch, length); pixel_values (n_images, num_crops+1, 3, 336,
            336) and image_sizes (n_images, 2) when there are images; labels when answers are given.
        """
        if return_tensors not in ("pt", None):
            raise ValueError(f"return_tensors must be 'pt', got {return_tensors!r}")
        prompts = [text] if isinstance(text, str) else list(text)
        if isinstance(answers, str):
            answers = [answers]
        if answers is not None and len(answers) != len(prompts):
            raise ValueError(f"got {len(prompts)} prompts but {len(answers)} answers")
        per_prompt = self._assign_images(prompts, images)
        flat_images = [image for group in per_prompt for image in group]
        vision = self.image_processor(flat_images) if flat_images else None
        counts = iter(vision["num_img_tokens"] if vision else [])
        batch = self.tokenize(prompts, [[next(counts) for _ in g] for g in per_prompt], answers, padding_side)
        if vision is not None:
            batch["pixel_values"] = vision["pixel_values"]
            batch["image_sizes"] = vision["image_sizes"]
        return BatchFeature(batch)

    def tokenize(
        self,
        prompts: list[str],
        image_tokens: list[list[int]],
        answers: list[str] | None = None,
        padding_side: str | None = None,
    ) -> dict[str, torch.Tensor]:
        """Token ids of prompts whose images are already processed: `image_tokens[i][k]` is the
        token count of prompt i's image k+1 (from the image processor). Lets a collator process
        each image once and tokenize twice (answer-supervised and generation batches)."""
        sequences, label_rows = [], []
        if len(image_tokens) != len(prompts):
            raise ValueError(f"got {len(prompts)} prompts but image token counts for {len(image_tokens)}")
        for index, (prompt, num_tokens) in enumerate(zip(prompts, image_tokens)):
            if len(_image_tags(prompt, index)) != len(num_tokens):
                raise ValueError(f"prompt {index} has {len(_image_tags(prompt, index))} image tags "
                                 f"but {len(num_tokens)} image token counts")
            answer = None if answers is None else answers[index]
            ids, labels = self._encode(prompt, num_tokens, answer, index)
            sequences.append(ids)
            label_rows.append(labels)
        return self._pad(sequences, label_rows if answers is not None else None, padding_side)

    def sequence_lengths(
        self, prompt: str, image_sizes: Sequence, answers: Sequence[str] | None = None
    ) -> list[int]:
        """Tokens of each row `tokenize` would build for `prompt` with the images of each entry of
        `image_sizes` (and the matching answer + `<|end|>`), padding excluded, computed from image sizes
        alone: no image is opened or processed. Samplers group by these lengths.

        `prompt` holds n image tags; each entry of `image_sizes` is the (width, height) of a row's one
        image (n = 1), or the n sizes of a row's images in tag order. The text before the last tag is
        tokenized once; the text after it is tokenized together with each answer, as `_encode` does
        (the answer can change how the prompt's end tokenizes)."""
        tags = _image_tags(prompt, 0)
        if not tags:
            raise ValueError(f"sequence_lengths needs a prompt with image tags, got none: {prompt!r}")
        if answers is not None and len(answers) != len(image_sizes):
            raise ValueError(f"got {len(image_sizes)} image sizes but {len(answers)} answers")
        rows = [[entry] if _is_size(entry) else list(entry) for entry in image_sizes]
        for row, sizes in enumerate(rows):
            if len(sizes) != len(tags):
                raise ValueError(f"the prompt has {len(tags)} image tags but row {row} has {len(sizes)} image sizes")
        chunks = IMAGE_TAG.split(prompt)[::2]
        head = sum(len(self._tokenize(chunk)) for chunk in chunks[:-1])  # a BOS before every image's block
        tails = [chunks[-1]] if answers is None else [chunks[-1] + answer + END_OF_TURN for answer in answers]
        tail = [len(ids) for ids in self.tokenizer(tails, add_special_tokens=True)["input_ids"]]
        tail = tail * len(rows) if answers is None else tail
        count = self.image_processor.num_image_tokens
        return [head + sum(count(int(width), int(height)) for width, height in sizes) + text
                for sizes, text in zip(rows, tail)]

    def _assign_images(self, prompts: list[str], images) -> list[list[Image.Image]]:
        """Split `images` over the prompts by their tags, checking tags and counts."""
        tags = [_image_tags(p, i) for i, p in enumerate(prompts)]
        if images is None:
            images = []
        elif isinstance(images, Image.Image):
            images = [images]
        images = list(images)
        if images and all(isinstance(x, (list, tuple)) for x in images):
            if len(images) != len(prompts):
                raise ValueError(f"got {len(prompts)} prompts but {len(images)} per-prompt image lists")
            groups = [list(g) for g in images]
        else:
            groups, start = [], 0
            for n in map(len, tags):
                groups.append(images[start : start + n])
                start += n
            if start < len(images):
                raise ValueError(
                    f"{len(images)} images given but the prompts have only {start} image tags; "
                    "write <|image_N|> for every image"
                )
        for index, (n_tags, group) in enumerate(zip(map(len, tags), groups)):
            if n_tags != len(group):
                raise ValueError(
                    f"prompt {index} has {n_tags} image tags but {len(group)} images were given for it"
                )
        return groups

    def _encode(
        self, prompt: str, num_tokens: list[int], answer: str | None, index: int
    ) -> tuple[list[int], list[int] | None]:
        chunks = IMAGE_TAG.split(prompt)[::2]  # text between tags (split also returns the numbers)
        order = [int(n) for n in IMAGE_TAG.findall(prompt)]
        ids: list[int] = []
        for position, chunk in enumerate(chunks[:-1]):
            ids += self._tokenize(chunk)
            image = order[position]
            ids += [-image] * num_tokens[image - 1]
        prompt_ids = ids + self._tokenize(chunks[-1])
        if answer is None:
            return prompt_ids, None
        full_ids = ids + self._tokenize(chunks[-1] + answer + END_OF_TURN)
        if full_ids[: len(prompt_ids)] != prompt_ids:
            raise ValueError(
                f"prompt {index}: the answer changes how the end of the prompt tokenizes, so the answer "
                f"cannot be separated for labels; end the prompt with '<|assistant|>\\n' (got {prompt[-30:]!r})"
            )
        labels = [IGNORE_INDEX] * len(prompt_ids) + full_ids[len(prompt_ids) :]
        return full_ids, labels

    def _tokenize(self, chunk: str) -> list[int]:
        return self.tokenizer(chunk, add_special_tokens=True)["input_ids"]

    def _pad(self, sequences: list[list[int]], labels: list[list[int]] | None, side: str | None) -> dict:
        side = _check_side(side or self.padding_side)
        length = max(len(s) for s in sequences)
        pad = self.pad_token_id
        input_ids = torch.full((len(sequences), length), pad, dtype=torch.long)
        attention_mask = torch.zeros((len(sequences), length), dtype=torch.long)
        label_tensor = torch.full((len(sequences), length), IGNORE_INDEX, dtype=torch.long)
        for row, ids in enumerate(sequences):
            span = slice(length - len(ids), length) if side == "left" else slice(0, len(ids))
            input_ids[row, span] = torch.tensor(ids, dtype=torch.long)
            attention_mask[row, span] = 1
            if labels is not None:
                label_tensor[row, span] = torch.tensor(labels[row], dtype=torch.long)
        batch = {"input_ids": input_ids, "attention_mask": attention_mask}
        if labels is not None:
            batch["labels"] = label_tensor
        return batch


def _image_tags(prompt: str, index: int) -> list[int]:
    """Image numbers in order of appearance; they must be 1..n, each once."""
    numbers = [int(n) for n in IMAGE_TAG.findall(prompt)]
    if sorted(numbers) != list(range(1, len(numbers) + 1)):
        raise ValueError(
            f"prompt {index}: image tags must be <|image_1|>..<|image_n|>, each once, got "
            f"{[f'<|image_{n}|>' for n in numbers]}"
        )
    return numbers


def _is_size(entry) -> bool:
    """Whether `entry` is one (width, height) pair rather than a row's list of them."""
    return len(entry) == 2 and all(isinstance(value, numbers.Integral) for value in entry)


def _check_side(side: str) -> str:
    if side not in ("left", "right"):
        raise ValueError(f"padding_side must be 'left' or 'right', got {side!r}")
    return side
