"""A merged export laid out like the base snapshot it came from, so other tools load it as they load
Microsoft's release.

vLLM, lmdeploy and transformers' remote-code loading (the `trust_remote_code` flag) find a Phi-3-V
checkpoint's classes through `auto_map` (config.json, preprocessor_config.json, ...) and the code files
(`modeling_phi3_v.py`, `processing_phi3_v.py`, ...) beside the weights, and read the tokenizer with the
transformers/tokenizers of their day. phi3v never runs or ships that code: at export time the files come
from the user's own download of the base (the local snapshot directory in model_spec.json's name_or_path,
or the hub id's copy in the local HF cache):
  - the code files (*.py) and chat template files (chat_template.jinja/.json), copied;
  - the tokenizer files (TOKENIZER_FILES): the base's bytes replace the ones phi3v's processor wrote, which
    are in transformers 5's layout (`TokenizersBackend`, `extra_special_tokens`, a re-serialised
    tokenizer.json) that transformers 4.x / tokenizers 0.19 cannot read. Only when phi3v reads the base's
    files exactly as the ones it trained with (same vocabulary, special ids, chat template, ids of a probe
    text); otherwise phi3v's own files stay and a warning says why;
  - config.json, preprocessor_config.json and generation_config.json: the base's keys and spelling (auto_map,
    torch_dtype, rope_scaling, ...) with the values phi3v wrote on top (transformers 5's keys, the weights'
    dtype, the `<|end|>` stop and pad ids), `torch_dtype` set to the dtype of the written weights.

With a preset base (tiny, random:phi3v, ...) there is no snapshot: `carry_snapshot_files` says what it
leaves out, and the export loads with phi3v only.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

from phi3v.modeling import load_tokenizer
from phi3v.modeling.hub import resolve_snapshot
from phi3v.modeling.model_spec import ModelSpec
from phi3v.modeling.tokenizer import END_OF_TURN

log = logging.getLogger(__name__)

# Files whose `auto_map` tells loaders which snapshot class to import (`module.Class`, module.py beside it).
AUTO_MAP_FILES = ("config.json", "preprocessor_config.json", "processor_config.json", "tokenizer_config.json")
CHAT_TEMPLATE_FILES = ("chat_template.jinja", "chat_template.json")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
                   "tokenizer.model")
# JSON files phi3v writes whose keys the base's copy may spell differently (merged: the base's keys, phi3v's values)
MERGED_JSON = ("config.json", "preprocessor_config.json", "processor_config.json", "generation_config.json")
CONFIG = "config.json"
# Chat tokens, spaces, digits, punctuation and non-ASCII: the cases where tokenizer pipelines differ.
PROBE = f"<|user|>\n<|image_1|>What is shown in this image?{END_OF_TURN}\n<|assistant|>\n" \
        f"Product:  Vintage Check Scarf, Category: Scarves, Full Price: 1,250.0 € {END_OF_TURN}"
LEFT_OUT = ("auto_map", "the snapshot's code files (*.py)", "its tokenizer files", "its config.json keys",
            "its generation_config.json defaults", "its chat template")


def base_snapshot(spec: ModelSpec) -> Path | None:
    """The local directory of the base's files, or None for a preset or a hub id not in the local cache."""
    if spec.is_preset:
        return None
    try:  # a local directory as is; a hub id only from the HF cache (an export never downloads)
        patterns = ["*.json", "*.py", "*.jinja", "tokenizer.model"]
        return resolve_snapshot(spec.name_or_path, patterns, local_files_only=True)
    except OSError:
        return None


def carry_snapshot_files(spec: ModelSpec, out_dir: Path) -> list[str]:
    """Lay a written export out like the base snapshot; return what came from it (file names).

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
    copied += _carry_tokenizer(snapshot, out_dir)
    for name in MERGED_JSON:
        base, ours = _read(snapshot / name), _read(out_dir / name)
        if base and ours:
            merged = _merged(base, ours)
            if name == CONFIG and "dtype" in ours:
                merged["torch_dtype"] = ours["dtype"]  # transformers 4.x's spelling of the written weights' dtype
            _write(out_dir / name, merged)
            copied.append(f"{name}:keys")
    missing = missing_auto_map_modules(out_dir)
    if missing:
        log.warning("auto_map names modules that %s lacks: %s", snapshot, ", ".join(missing))
    log.info("carried over from the base snapshot %s: %s", snapshot, ", ".join(copied) or "nothing")
    return copied


def loads_with_remote_code(directory: Path) -> bool:
    """Whether config.json has an auto_map whose every module file is in the directory."""
    return bool(_read(directory / CONFIG).get("auto_map")) and not missing_auto_map_modules(directory)


def tokenizer_difference(snapshot: Path, out_dir: Path) -> str | None:
    """How phi3v's reading of the base's tokenizer files differs from its reading of the export's, or None."""
    for directory in (snapshot, out_dir):
        if not (directory / "tokenizer.json").is_file():
            return f"{directory} has no tokenizer.json"
    base, ours = load_tokenizer(snapshot), load_tokenizer(out_dir)
    checks = {
        "vocabulary": lambda t: t.get_vocab(),
        "special token ids": lambda t: (t.bos_token_id, t.eos_token_id, t.pad_token_id, t.unk_token_id,
                                        t.convert_tokens_to_ids(END_OF_TURN)),
        "ids of a probe text": lambda t: t(PROBE)["input_ids"],
        "decoded probe text": lambda t: t.decode(t(PROBE)["input_ids"], skip_special_tokens=True),
        "chat template": lambda t: t.chat_template,
    }
    different = [what for what, read in checks.items() if read(base) != read(ours)]
    return f"their {', '.join(different)} differ" if different else None


def _carry_tokenizer(snapshot: Path, out_dir: Path) -> list[str]:
    difference = tokenizer_difference(snapshot, out_dir)
    if difference:
        log.warning("the export keeps phi3v's tokenizer files (transformers 5 layout, which older loaders cannot "
                    "read) instead of the base snapshot's %s: %s", snapshot, difference)
        return []
    carried = []
    for name in TOKENIZER_FILES + CHAT_TEMPLATE_FILES:  # exactly the base's: none of phi3v's re-saved ones
        (out_dir / name).unlink(missing_ok=True)
        if (snapshot / name).is_file():
            carried.append(_copy(snapshot / name, out_dir))
    return carried


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


def _merged(base: dict, ours: dict) -> dict:
    """The base's keys in its order with phi3v's values, then phi3v's new keys; nested objects alike
    (a base sub-key phi3v does not write is kept)."""
    merged = {**base, **ours}
    for key, value in ours.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            merged[key] = _merged(base[key], value)
    return merged


def _copy(path: Path, out_dir: Path) -> str:
    shutil.copyfile(path, out_dir / path.name)
    return path.name


def _read(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


def _write(path: Path, content: dict) -> None:
    path.write_text(json.dumps(content, indent=2) + "\n")
