"""Phi3VForCausalLM: transformers' Phi-3 decoder with the HD image embedding in front.

Prompts carry image k as a run of `-k` token ids (the processor reserves exactly as many positions
as the image has feature tokens). The forward embeds the text ids (negatives read as 0), then
writes image k's projected features into the `-k` positions after checking the counts agree.
The caller's `input_ids` are never modified.

Rotary scaling is Phi-3's `su`/longrope: short factors while the longest position + 1 <= 4096,
long factors beyond, decided per forward. As in the original, a generation that crosses 4096
keeps the cached keys computed with the short factors (no cache rebuild).
"""

from __future__ import annotations

import functools

import torch
from torch import nn
from transformers import GenerationMixin, PreTrainedModel
from transformers import initialization as init
from transformers.cache_utils import Cache
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast
from transformers.modeling_utils import slice_logits_to_keep
from transformers.models.phi3.modeling_phi3 import Phi3DecoderLayer, Phi3Model

from .checkpointing import offloaded_checkpoint
from .configuration import Phi3VConfig
from .image_embedding import Phi3VImageEmbedding

IGNORE_INDEX = -100


def init_phi3v_weights(model: PreTrainedModel, module: nn.Module) -> None:
    """transformers' default init plus the two separators, which the original starts at zero."""
    PreTrainedModel._init_weights(model, module)
    if isinstance(module, Phi3VImageEmbedding):
        init.zeros_(module.glb_GN)
        init.zeros_(module.sub_GN)


class Phi3VPreTrainedModel(PreTrainedModel):
    config: Phi3VConfig
    config_class = Phi3VConfig
    base_model_prefix = "model"
    supports_gradient_checkpointing = True
    _no_split_modules = ["Phi3DecoderLayer", "CLIPEncoderLayer"]
    _supports_flash_attn = True
    _supports_sdpa = True
    _supports_attention_backend = True
    _can_record_outputs = {"hidden_states": Phi3DecoderLayer}
    # Exports made with the original code may carry the alias of embed_tokens under this name.
    _keys_to_ignore_on_load_unexpected = [r"model\.vision_embed_tokens\.wte\.weight"]

    def _init_weights(self, module: nn.Module) -> None:
        init_phi3v_weights(self, module)


class Phi3VModel(Phi3Model):
    """The Phi-3 decoder stack plus `vision_embed_tokens`, under the checkpoint's key names."""

    config: Phi3VConfig
    config_class = Phi3VConfig
    _no_split_modules = Phi3VPreTrainedModel._no_split_modules

    def __init__(self, config: Phi3VConfig):
        super().__init__(config)
        self.vision_embed_tokens = Phi3VImageEmbedding(config)
        self.post_init()

    def _init_weights(self, module: nn.Module) -> None:
        init_phi3v_weights(self, module)

    def embed_inputs(
        self,
        input_ids: torch.LongTensor,
        pixel_values: torch.Tensor | None = None,
        image_sizes: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Token embeddings with image features written at the negative-id positions."""
        image_positions = input_ids < 0
        embeds = self.embed_tokens(input_ids.clamp(min=0))  # a new tensor: the caller's ids stay intact
        if not bool(image_positions.any()):
            return embeds
        if pixel_values is None or image_sizes is None:
            raise ValueError(
                "input_ids hold image positions (negative ids) but pixel_values/image_sizes were not given"
            )
        features = self.vision_embed_tokens(pixel_values, image_sizes)
        slots = image_slots(input_ids)
        if len(slots) != len(features):
            raise ValueError(
                f"input_ids reference {len(slots)} images but pixel_values holds {len(features)} images"
            )
        embeds = embeds.clone()
        for (row, positions), image_features in zip(slots, features):
            if positions.numel() != image_features.shape[0]:
                raise ValueError(
                    f"image in batch row {row}: {positions.numel()} image positions in input_ids but "
                    f"{image_features.shape[0]} image feature tokens (image_sizes and prompt disagree)"
                )
            embeds[row, positions] = image_features.to(embeds.dtype)
        return embeds

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        use_cache: bool | None = None,
        pixel_values: torch.Tensor | None = None,
        image_sizes: torch.Tensor | None = None,
        **kwargs,
    ) -> BaseModelOutputWithPast:
        if inputs_embeds is None and input_ids is not None:
            inputs_embeds = self.embed_inputs(input_ids, pixel_values, image_sizes)
        return super().forward(
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            **kwargs,
        )


def image_slots(input_ids: torch.Tensor) -> list[tuple[int, torch.Tensor]]:
    """(batch row, positions) of every image, in pixel_values order: row by row, image 1, 2, ...

    Row b's images are the ids -1..-n_b; any gap (an id -3 without -2) is an error because
    pixel_values could not be matched to it.
    """
    slots = []
    for row, ids in enumerate(input_ids):
        negatives = ids[ids < 0]
        if negatives.numel() == 0:
            continue
        image_ids = sorted((-negatives).unique().tolist())
        if image_ids != list(range(1, len(image_ids) + 1)):
            raise ValueError(f"batch row {row}: image ids must be 1..n without gaps, got {image_ids}")
        for image_id in image_ids:
            slots.append((row, (ids == -image_id).nonzero().squeeze(1)))
    return slots


class Phi3VForCausalLM(Phi3VPreTrainedModel, GenerationMixin):
    """Phi-3-Vision / Phi-3.5-Vision with a language-modelling head.

    `forward(input_ids, attention_mask, pixel_values, image_sizes, labels=...)` returns the shifted
    cross-entropy over labels != -100 (the mean, or the sum / `num_items_in_batch` when given, as in
    transformers; with `logits_to_keep=n` over the last n positions); `generate(...)` works with the
    KV cache and left padding.
    """

    _tp_plan = {"lm_head": "colwise_gather_output"}
    input_modalities = ("image", "text")
    # (hidden, lm_head weight, labels, num_items_in_batch) -> loss without logits; set by kernels.apply_kernels
    linear_cross_entropy = None

    def __init__(self, config: Phi3VConfig):
        super().__init__(config)
        self.model = Phi3VModel(config)
        self.vocab_size = config.vocab_size
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def vision_layers(self) -> nn.ModuleList:
        """CLIP's encoder layers (the last one never runs: features come from the one before)."""
        return self.model.vision_embed_tokens.img_processor.vision_model.encoder.layers

    def activation_checkpointing_enable(
        self, activation_checkpointing_kwargs=None, every_n_layers: int = 1, offload: bool = False,
        vision: bool = True,
    ) -> None:
        """Recompute layer activations in backward instead of keeping them.

        Args:
            every_n_layers: checkpoint decoder layers 0, n, 2n, ...; 1 = every layer (least memory).
                Each layer left out keeps its activations (estimated ~20 x hidden values per token:
                ~1.2 GB in bf16 at batch 4 x 2.5k tokens for Phi-3-V) and skips one layer forward in backward.
            offload: keep each checkpointed layer's input in host memory (see checkpointing.py).
            vision: also checkpoint every CLIP layer. Matters only when CLIP is trained (LoRA on
                the tower or the tower itself): a frozen tower runs without autograd, so its layers
                keep nothing and recompute nothing either way.
            activation_checkpointing_kwargs: passed to `torch.utils.checkpoint.checkpoint` (default
                non-reentrant; `checkpointing.checkpoint_options` gives the selective policy's).
        """
        if every_n_layers < 1:
            raise ValueError(f"every_n_layers must be >= 1, got {every_n_layers}")
        super().activation_checkpointing_enable(activation_checkpointing_kwargs, offload=False)
        layers = [*self.model.layers, *self.vision_layers()]
        if offload:  # transformers' offload pins host memory even on CPU-only PyTorch, where that fails
            options = activation_checkpointing_kwargs or {"use_reentrant": False}
            for layer in layers:  # the layers' documented hook (transformers' GradientCheckpointingLayer)
                layer._gradient_checkpointing_func = functools.partial(offloaded_checkpoint, **options)
        # transformers numbers decoder and CLIP layers in one sequence; choose each tower's here
        for index, layer in enumerate(self.model.layers):
            layer.gradient_checkpointing = index % every_n_layers == 0
        for layer in self.vision_layers():
            layer.gradient_checkpointing = vision

    def enable_input_require_grads(self) -> None:
        """Make the decoder's token embeddings require grad (what PEFT and transformers ask for when
        checkpointing with frozen embeddings), and nothing else.

        transformers' version hooks the input embeddings of every sub-model, CLIP's patch
        embedding included: a frozen tower would then run with autograd, and backward would
        recompute and back-propagate all of CLIP although none of its weights trains. Whether
        CLIP needs autograd is decided by its own trainable weights alone."""
        self.disable_input_require_grads()
        embeddings = self.get_input_embeddings()
        hook = embeddings.register_forward_hook(lambda module, args, output: output.requires_grad_(True))
        self._require_grads_hooks = [hook]
        self._require_grads_hook = hook  # the attribute name older callers look for

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        pixel_values: torch.Tensor | None = None,
        image_sizes: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        **kwargs,
    ) -> CausalLMOutputWithPast:
        outputs = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            pixel_values=pixel_values,
            image_sizes=image_sizes,
            **kwargs,
        )
        hidden_states = slice_logits_to_keep(outputs.last_hidden_state, logits_to_keep)
        if labels is not None and logits_to_keep:
            if not isinstance(logits_to_keep, int):
                raise ValueError("labels need an int logits_to_keep (the last n positions), not indices")
            labels = labels[:, -logits_to_keep:]  # the kept positions' labels
        if labels is not None and self.linear_cross_entropy is not None and torch.is_grad_enabled():
            # fused lm_head + loss (model.spec.kernels, kernels.py): no logits are stored or returned
            items = kwargs.get("num_items_in_batch")
            loss = self.linear_cross_entropy(hidden_states, self.lm_head.weight, labels, items)
            return CausalLMOutputWithPast(loss=loss, cache=outputs.cache, hidden_states=outputs.hidden_states,
                                          attentions=outputs.attentions)
        logits = self.lm_head(hidden_states)
        loss = None
        if labels is not None:
            loss = self.loss_function(logits=logits, labels=labels, vocab_size=self.config.vocab_size, **kwargs)
        return CausalLMOutputWithPast(
            loss=loss,
            logits=logits,
            cache=outputs.cache,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
        )
