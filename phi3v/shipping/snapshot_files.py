"""A merged export laid out like the base snapshot it came from, so other tools load it as they load
Microsoft's release.

vLLM, lmdeploy and transformers' remote-code loading (the `trust_remote_code` flag) find a Phi-3-V
checkpoint's classes through `auto_map` (config.json, preprocessor_config.json, ...) and the code files
(`modeling_phi3_v.py`, `processing_phi3_v.py`, ...) beside the weights. phi3v never runs or ships that code:
at export time the files are copied from the user's own download of the base (the local snapshot
directory in model_spec.json's name_or_path, or the hub id's copy in the local HF cache), with each
file's `auto_map`, the snapshot's generation_config.json fields phi3v does not set, and the chat template
(tokenizer_config.json's `chat_template`, plus chat_template.jinja/.json when the snapshot has them).

With a preset base (tiny, random:phi3v, ...) there is no snapshot: `carry_snapshot_files` says what it
leaves out, and the export loads with phi3v only.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

from phi3v.modeling.hub import resolve_snapshot
from phi3v.modeling.model_spec import ModelSpec

log = logging.getLogger(__name__)

# Files whose `auto_map` tells loaders which snapshot class to import (`module.Class`, module.py beside it).
AUTO_MAP_FILES = ("config.json", "preprocessor_config.json", "processor_config.json", "tokenizer_config.json")
CHAT_TEMPLATE_FILES = ("chat_template.jinja", "chat_template.json")
GENERATION_CONFIG = "generation_config.json"
TOKENIZER_CONFIG = "tokenizer_config.json"
LEFT_OUT = ("auto_map", "the snapshot's code files (*.py)", "its generation_config.json defaults", "its chat template")


def base_snapshot(spec: ModelSpec) -> Path | None:
    """The local directory of the base's files, or None for a preset or a hub id not in the local cache."""
    if spec.is_preset:
        return None
    try:  # a local directory as is; a hub id only from the HF cache (an export never downloads)
        return resolve_snapshot(spec.name_or_path, ["*.json", "*.py", "*.jinja"], local_files_only=True)
    except OSError:
        return None


def carry_snapshot_files(spec: ModelSpec, out_dir: Path) -> list[str]:
    """Copy the base snapshot's loader files into a written export; return what was copied (file names).

    Call after the weights and processor files are in `out_dir` (their JSON files are updated in place).
    """
    snapshot = base_snapshot(spec)
    if snapshot is None:
        reason = f"the base is the preset {spec.name_or_path}" if spec.is_preset else (
            f"the base {spec.name_or_path} is neither a local directory nor in the local HF cache")
        log.warning("export leaves out %s: %s. It loads with phi3v (Phi3VForCausalLM / phi3v.predict), not with "
                    "trust_remote_code loaders such as vLLM or lmdeploy", ", ".join(LEFT_OUT), reason)
        return []
    copied = [_copy(path, out_dir) for path in sorted(snapshot.glob("*.py"))]
    copied += [_copy(snapshot / name, out_dir) for name in CHAT_TEMPLATE_FILES if (snapshot / name).is_file()]
    for name in AUTO_MAP_FILES:
        auto_map = _read(snapshot / name).get("auto_map")
        if auto_map and (out_dir / name).is_file():
            _update(out_dir / name, {"auto_map": auto_map})
            copied.append(f"{name}:auto_map")
    template = _read(snapshot / TOKENIZER_CONFIG).get("chat_template")
    if template and (out_dir / TOKENIZER_CONFIG).is_file():
        _update(out_dir / TOKENIZER_CONFIG, {"chat_template": template})
        copied.append(f"{TOKENIZER_CONFIG}:chat_template")
    if (snapshot / GENERATION_CONFIG).is_file():
        ours = _read(out_dir / GENERATION_CONFIG)  # eos/pad ids set for <|end|> win over the snapshot's
        _write(out_dir / GENERATION_CONFIG, {**_read(snapshot / GENERATION_CONFIG), **ours})
        copied.append(GENERATION_CONFIG)
    missing = missing_auto_map_modules(out_dir)
    if missing:
        log.warning("auto_map names modules that %s lacks: %s", snapshot, ", ".join(missing))
    log.info("carried over from the base snapshot %s: %s", snapshot, ", ".join(copied) or "nothing")
    return copied


def missing_auto_map_modules(directory: Path) -> list[str]:
    """Module files named by the directory's auto_map entries that are not in it."""
    missing = set()
    for name in AUTO_MAP_FILES:
        for target in _read(directory / name).get("auto_map", {}).values():
            for reference in target if isinstance(target, list) else [target]:
                if reference is None or "--" in reference:  # "repo--module.Class": code in another hub repo
                    continue
                module = reference.rsplit(".", 1)[0]
                if not (directory / f"{module}.py").is_file():
                    missing.add(f"{module}.py")
    return sorted(missing)


def _copy(path: Path, out_dir: Path) -> str:
    shutil.copyfile(path, out_dir / path.name)
    return path.name


def _read(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


def _update(path: Path, values: dict) -> None:
    _write(path, {**_read(path), **values})


def _write(path: Path, content: dict) -> None:
    path.write_text(json.dumps(content, indent=2) + "\n")
