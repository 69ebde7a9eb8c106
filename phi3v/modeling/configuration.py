"""Phi3VConfig: reads the released Phi-3-Vision / Phi-3.5-Vision `config.json` files unchanged.

The text side is exactly transformers' `Phi3Config`. On top of it the released files carry two
dicts (`embd_layer`, `img_processor`) that describe the image embedding, and nothing about the
vision tower itself: the original code hard-codes CLIP ViT-L/14-336. phi3v adds an optional
`vision_config` (CLIPVisionConfig fields) so that small towers are possible; absent, it is
ViT-L/14-336.
"""

from __future__ import annotations

from typing import Any

from huggingface_hub.dataclasses import strict
from transformers import CLIPVisionConfig, Phi3Config
from transformers.configuration_utils import SubConfigSpec

# The tower every released checkpoint uses (openai/clip-vit-large-patch14-336).
CLIP_VIT_L_14_336 = {
    "hidden_size": 1024,
    "intermediate_size": 4096,
    "num_hidden_layers": 24,
    "num_attention_heads": 16,
    "image_size": 336,
    "patch_size": 14,
    "num_channels": 3,
    "hidden_act": "quick_gelu",
    "layer_norm_eps": 1e-5,
    "attention_dropout": 0.0,
    "projection_dim": 768,
}

DEFAULT_EMBD_LAYER = {
    "embedding_cls": "image",
    "hd_transform_order": "sub_glb",
    "projection_cls": "mlp",
    "use_hd_transform": True,
    "with_learnable_separator": True,
}

DEFAULT_IMG_PROCESSOR = {
    "image_dim_out": 1024,
    "model_name": "openai/clip-vit-large-patch14-336",
    "name": "clip_vision_model",
    "num_img_tokens": 144,
}


@strict
class Phi3VConfig(Phi3Config):
    """Configuration of a Phi-3-Vision model (model_type `phi3_v`).

    Args (beyond `Phi3Config`):
        embd_layer: the released image-embedding description; phi3v implements the variant of every
            released checkpoint (HD transform, learnable separators, `sub_glb` order, MLP projection)
            and rejects others.
        img_processor: `image_dim_out` (the tower width) and `num_img_tokens` (144 per 336px crop).
        vision_config: CLIPVisionConfig fields of the tower; defaults to CLIP ViT-L/14-336.
    """

    model_type = "phi3_v"
    sub_configs_defaults = {
        "vision_config": SubConfigSpec(config_class=CLIPVisionConfig, init_kwargs=dict(CLIP_VIT_L_14_336)),
    }

    embd_layer: dict | None = None
    img_processor: dict | None = None
    vision_config: dict | CLIPVisionConfig | None = None

    def __post_init__(self, **kwargs):
        kwargs.pop("auto_map", None)  # remote-code pointers: phi3v never runs remote code
        if kwargs.get("_attn_implementation") == "flash_attention_2":
            # The released files pin flash_attention_2, which fails on CPU and without the package;
            # SDPA is the default and flash attention is chosen with attn_implementation=....
            kwargs.pop("_attn_implementation")
        self.embd_layer = {**DEFAULT_EMBD_LAYER, **(self.embd_layer or {})}
        self.img_processor = {**DEFAULT_IMG_PROCESSOR, **(self.img_processor or {})}
        if self.vision_config is None and "image_dim_out" in (self.img_processor or {}):
            # A released config without a tower description: ViT-L/14-336 as in the original code.
            self.vision_config = dict(CLIP_VIT_L_14_336)
        super().__post_init__(**kwargs)
        _check_embedding_variant(self)

    def convert_rope_params_to_dict(self, default_theta: float = 10_000.0, ignore_keys=None, **kwargs):
        # The released files say `rope_scaling: {type: su, ...}`. transformers 5 calls it `longrope`
        # and wants `original_max_position_embeddings` inside the rope dict.
        rope = kwargs.get("rope_scaling") or self.rope_parameters
        if isinstance(rope, dict):
            rope = dict(rope)
            if rope.get("type") in ("su", "longrope") or rope.get("rope_type") in ("su", "longrope"):
                rope.pop("type", None)
                rope["rope_type"] = "longrope"
                rope.setdefault("original_max_position_embeddings", self.original_max_position_embeddings)
                # 131072 / 4096 = 32: the attention factor sqrt(1 + ln 32 / ln 4096) follows from it.
                rope.setdefault("factor", self.max_position_embeddings / rope["original_max_position_embeddings"])
            if "rope_scaling" in kwargs:
                kwargs["rope_scaling"] = rope
            else:
                self.rope_parameters = rope
        return super().convert_rope_params_to_dict(default_theta=default_theta, ignore_keys=ignore_keys, **kwargs)

    def to_dict(self) -> dict[str, Any]:
        out = super().to_dict()
        # Also write the legacy fields so exports load in tools that read the original format.
        rope = out.get("rope_parameters") or {}
        if rope.get("rope_type") == "longrope":
            out["rope_scaling"] = {
                "type": "su",  # the name the original code (and older tools) accept
                "short_factor": list(rope["short_factor"]),
                "long_factor": list(rope["long_factor"]),
            }
        if "rope_theta" in rope:
            out["rope_theta"] = rope["rope_theta"]
        out["architectures"] = out.get("architectures") or ["Phi3VForCausalLM"]
        return out


def _check_embedding_variant(config: Phi3VConfig) -> None:
    """Reject image-embedding variants no released checkpoint uses, naming the key to change."""
    embd, proc = config.embd_layer, config.img_processor
    problems = []
    expected = {
        "use_hd_transform": True,
        "with_learnable_separator": True,
        "hd_transform_order": "sub_glb",
        "projection_cls": "mlp",
    }
    for key, value in expected.items():
        if embd.get(key) != value:
            problems.append(f"embd_layer.{key} = {embd.get(key)!r} is not supported (phi3v implements {value!r})")
    vision_width = config.vision_config.hidden_size
    if proc.get("image_dim_out", vision_width) != vision_width:
        problems.append(
            f"img_processor.image_dim_out = {proc['image_dim_out']} must equal vision_config.hidden_size = "
            f"{vision_width}"
        )
    if proc.get("num_img_tokens", 144) != 144:
        problems.append(f"img_processor.num_img_tokens = {proc['num_img_tokens']} is not supported (144)")
    grid = config.vision_config.image_size // config.vision_config.patch_size
    if grid % 2:
        problems.append(
            f"vision_config.image_size / patch_size = {grid} must be even for the 2x2 patch merge"
        )
    if problems:
        raise ValueError("Unsupported Phi3VConfig:\n" + "\n".join(problems))
