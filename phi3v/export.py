"""`python -m phi3v.export adapter=<dir> out=<dir> [merge=true]`: turn a training export into a deliverable.

merge=true (default) folds the LoRA deltas into the base and writes a plain Phi-3-V checkpoint in the
original key layout (loads with `Phi3VForCausalLM.from_pretrained` or AutoModelForCausalLM, no PEFT),
laid out like the base snapshot it came from: when the base is a local download with `auto_map`, its
code files, auto_map, generation config and chat template are copied over, so vLLM / lmdeploy /
trust_remote_code loaders load it like the release (training/snapshot_files.py; a preset base: a warning
names what is left out). Each stage is logged with its time.
An adapter trained on a quantized base (model.spec.quantization) is merged into the unquantized base.
merge=false loads the export, checks its adapter holds every LoRA tensor, and copies it to `out`.
Either way `out` can be passed to `python -m phi3v.predict adapter=<out>`.
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf


class UsageError(Exception):
    """A bad command-line value; the message names the key (printed as one line, exit code 1)."""


def check_config(cfg: DictConfig) -> None:
    """Fail on bad keys before the (slow) model imports."""
    for key in ("adapter", "out"):
        if OmegaConf.is_missing(cfg, key):
            raise UsageError(f"{key}= is required (python -m phi3v.export adapter=<dir> out=<dir> [merge=true])")
    if not Path(cfg.adapter).is_dir():
        raise UsageError(f"adapter={cfg.adapter}: no such directory")
    if not (Path(cfg.adapter) / "model_spec.json").is_file():
        raise UsageError(f"adapter={cfg.adapter}: not a phi3v export (no model_spec.json in it)")


def describe(directory: Path) -> str:
    """One line per written file with its size."""
    lines = [f"wrote {directory}:"]
    for file in sorted(p for p in directory.iterdir() if p.is_file()):
        lines.append(f"  {file.name:<32} {file.stat().st_size / 1e6:10.2f} MB")
    return "\n".join(lines)


def run(cfg: DictConfig) -> Path:
    from transformers.utils import logging as hf_logging

    from phi3v.training.export import copy_export, merge_adapter, merge_note

    hf_logging.disable_progress_bar()
    # PEFT calls a transformers property deprecated in v5: noise for users of the command, not theirs to fix.
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing", category=FutureWarning)
    try:
        if cfg.merge:
            note = merge_note(cfg.adapter)
            if note:
                print(f"note: {note}")
            return merge_adapter(cfg.adapter, cfg.out)
        return copy_export(cfg.adapter, cfg.out)
    except FileExistsError as problem:  # `out` is a file or someone's non-export directory
        raise UsageError(f"out={cfg.out}: {problem}") from problem


@hydra.main(config_path="../conf", config_name="export", version_base="1.3")
def main(cfg: DictConfig) -> None:
    try:
        check_config(cfg)
        out = run(cfg)
    except UsageError as problem:
        print(f"error: {problem}", file=sys.stderr)
        sys.exit(1)
    print(describe(out))


if __name__ == "__main__":
    main()
