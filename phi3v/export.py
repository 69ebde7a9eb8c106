"""`python -m phi3v.export adapter=<dir> out=<dir> [merge=true]`: turn a training export into a deliverable.

merge=true (default) folds the LoRA deltas into the base and writes a plain Phi-3-V checkpoint in the
original key layout (loads with `Phi3VForCausalLM.from_pretrained` or AutoModelForCausalLM, no PEFT),
laid out like the base snapshot it came from: when the base is a local download, its code files, auto_map,
tokenizer files (its bytes), config keys, generation config and chat template are carried over, so vLLM /
lmdeploy / trust_remote_code loaders load it like the release (phi3v/shipping/snapshot_files.py; a preset base: a
warning names what is left out). Each stage is logged with its time. Either way the export has a model card
(README.md with the run's metrics) and files everyone can read (the umask's modes).
An adapter trained on a quantized base (model.spec.quantization) is merged into the unquantized base.
merge=false loads the export, checks its adapter holds every LoRA tensor, and copies it to `out`.
Either way `out` can be passed to `python -m phi3v.predict adapter=<out>`.
"""

from __future__ import annotations

from pathlib import Path

import hydra
from omegaconf import DictConfig

from phi3v.cli import UsageError, check_export_dir, quiet_console, require, run_command, start


def check_config(cfg: DictConfig) -> None:
    """Fail on bad keys before the (slow) model imports."""
    for key in ("adapter", "out"):
        require(cfg, key, " (python -m phi3v.export adapter=<dir> out=<dir> [merge=true])")
    check_export_dir("adapter", cfg.adapter)


def describe(directory: Path) -> str:
    """One line per written file with its size."""
    lines = [f"wrote {directory}:"]
    for file in sorted(p for p in directory.iterdir() if p.is_file()):
        lines.append(f"  {file.name:<32} {file.stat().st_size / 1e6:10.2f} MB")
    return "\n".join(lines)


def run(cfg: DictConfig) -> Path:
    from phi3v.shipping.adapter import copy_export, merge_adapter, merge_note

    quiet_console()
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
    print(describe(run_command(check_config, run, cfg)))


if __name__ == "__main__":
    start(main)
