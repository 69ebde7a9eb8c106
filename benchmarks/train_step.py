"""One LoRA training step of the real-size random model on the CPU: build time, step time split into
CLIP forward, decoder forward, backward and optimizer, and peak memory, before and after three fixes.

Run: `python benchmarks/train_step.py` (random:phi3v, float32, num_crops 1, batch 1, checkpointing
on: ~17 GiB of weights, ~5-10 minutes on 2 cores). `--layers 2` keeps the real widths at depth 2 for
a quick look. float32 because bf16 matrix products on these CPUs fall back to a naive kernel
(~0.4 GFLOP/s per core vs ~53 in float32): a bf16 step at real size does not finish in 30 minutes.

The two variants, on the same model and batch:
- before: transformers' `enable_input_require_grads`, which also hooks CLIP's patch embedding, so a
  frozen CLIP tower runs under autograd and backward recomputes and back-propagates all of it; and
  the padding mask always passed to attention.
- after (what training does): only the decoder's token embeddings require grad (a frozen tower runs
  without autograd) and right-padded training rows attend purely causally (no dense mask; see
  phi3v/modeling/masking.py). With batch 1 there is no padding: the mask part only shows at
  `--batch 2` or more with answers of different lengths; and the lm_head only over the answer's
  positions (`logits_to_keep`, phi3v.training.losses.logits_window) instead of all ~2,500.
Peak memory is the process's resident set (VmHWM), reset before each variant on Linux. Each variant
takes one optimizer step, so the second runs on weights the first updated (its loss differs).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from PIL import Image
from transformers import PreTrainedModel

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.gpu import recipe_lora  # noqa: E402
from phi3v.modeling.configuration import CLIP_VIT_L_14_336  # noqa: E402
from phi3v.modeling.masking import training_attention_mask  # noqa: E402
from phi3v.modeling.model_spec import DTYPES, ModelSpec, load_processor, torch_dtype  # noqa: E402
from phi3v.modeling.quantization import weight_bytes  # noqa: E402
from phi3v.modeling.random_weights import build_random_model  # noqa: E402
from phi3v.task import TaskSpec  # noqa: E402
from phi3v.training.lora import apply_lora  # noqa: E402
from phi3v.training.losses import logits_window, supervised_loss_sum  # noqa: E402

ANSWERS = ["Product: Vintage Check Cashmere Scarf, Category: Scarves, Full Price: 490.00",
           "Product: Trench Coat, Category: Coats, Full Price: 2,290.00"]


def peak_rss_gib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 2**20
    return float("nan")


def reset_peak_rss() -> None:
    try:
        Path("/proc/self/clear_refs").write_text("5")  # Linux: VmHWM := current RSS
    except OSError:
        pass


class ClipTimer:
    """Wall time of the image embedding (CLIP + projector) inside each forward, and whether CLIP's
    output takes part in autograd (then backward runs through the whole tower)."""

    def __init__(self, module: torch.nn.Module, tower: torch.nn.Module):
        self.seconds = 0.0
        self.in_autograd = False
        module.register_forward_pre_hook(self._start)
        module.register_forward_hook(self._stop)
        tower.register_forward_hook(self._tower)

    def _tower(self, module, args, output):
        self.in_autograd = bool(output[0].requires_grad)

    def _start(self, module, args):
        self._started = time.perf_counter()

    def _stop(self, module, args, output):
        self.seconds += time.perf_counter() - self._started


def step(model, batch: dict, variant: str, clip: ClipTimer) -> dict:
    base = model.get_base_model()
    if variant == "before":
        PreTrainedModel.enable_input_require_grads(base)  # hooks CLIP's patch embedding too
        mask = batch["attention_mask"]
    else:
        base.enable_input_require_grads()  # phi3v's: the decoder's token embeddings only
        mask = training_attention_mask(batch["attention_mask"], batch["labels"])
    inputs = {k: v for k, v in batch.items() if k not in ("labels", "attention_mask")}
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    model.train()
    clip.seconds = 0.0
    reset_peak_rss()
    start = time.perf_counter()
    window = 0 if variant == "before" else logits_window(batch["labels"])  # 0: every position's logits
    logits = model(**inputs, attention_mask=mask, use_cache=False, logits_to_keep=window).logits
    loss_sum, tokens = supervised_loss_sum(logits, batch["labels"][:, -window:] if window else batch["labels"])
    loss = loss_sum / tokens
    del logits
    forward = time.perf_counter() - start
    clip_forward = clip.seconds
    clip_requires_grad = clip.in_autograd
    start = time.perf_counter()
    loss.backward()
    backward = time.perf_counter() - start
    start = time.perf_counter()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return {"variant": variant, "loss": float(loss.detach()), "clip_forward_s": clip_forward,
            "decoder_forward_s": forward - clip_forward, "backward_s": backward,
            "optimizer_s": time.perf_counter() - start, "step_s": forward + backward,
            "clip_in_autograd": clip_requires_grad, "peak_rss_gib": peak_rss_gib()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", default="random:phi3v")
    parser.add_argument("--dtype", default="float32", choices=sorted(DTYPES))
    parser.add_argument("--num-crops", type=int, default=1)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--layers", type=int, default=None, help="decoder and CLIP depth (default: the real one)")
    parser.add_argument("--checkpointing", default="on", choices=["on", "off"])
    parser.add_argument("--variants", default="after,before")
    parser.add_argument("--quantization", default=None, choices=["nf4", "int8"], help="QLoRA base (bitsandbytes)")
    args = parser.parse_args()

    overrides = {}
    if args.layers:
        overrides = {"num_hidden_layers": args.layers,
                     "vision_config": {**CLIP_VIT_L_14_336, "num_hidden_layers": args.layers}}
    torch.manual_seed(0)
    reset_peak_rss()
    start = time.perf_counter()
    base = build_random_model(args.preset, dtype=torch_dtype(args.dtype), quantization=args.quantization, **overrides)
    built = time.perf_counter() - start
    weights = weight_bytes(base) / 2**30
    stored = sum(p.numel() for p in base.parameters())  # packed values for a quantized base
    print(f"built {args.preset} ({args.dtype}, quantization {args.quantization}, {stored:,} stored parameters, "
          f"{weights:.2f} GiB) in {built:.1f} s, peak RSS {peak_rss_gib():.2f} GiB", flush=True)
    if args.checkpointing == "on":
        base.activation_checkpointing_enable()
    model = apply_lora(base, recipe_lora())
    processor = load_processor(ModelSpec(name_or_path=args.preset, num_crops=args.num_crops))
    photo = Image.effect_noise((1000, 750), 64).convert("RGB")
    answers = [ANSWERS[i % len(ANSWERS)] for i in range(args.batch)]
    batch = processor([TaskSpec().prompt()] * args.batch, [photo] * args.batch, answers=answers)
    print(f"batch {args.batch} x {batch['input_ids'].shape[1]} tokens (num_crops {args.num_crops})", flush=True)
    embedding = base.model.vision_embed_tokens
    clip = ClipTimer(embedding, embedding.img_processor)
    rows = []
    for variant in args.variants.split(","):
        row = step(model, batch, variant, clip)
        rows.append(row)
        print(row, flush=True)
    print("\n| variant | CLIP fwd s | decoder fwd s | backward s | step s | CLIP in autograd | peak RSS GiB | loss |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['variant']} | {r['clip_forward_s']:.1f} | {r['decoder_forward_s']:.1f} | {r['backward_s']:.1f} "
              f"| {r['step_s']:.1f} | {r['clip_in_autograd']} | {r['peak_rss_gib']:.2f} | {r['loss']:.4f} |")


if __name__ == "__main__":
    main()
