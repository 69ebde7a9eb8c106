"""What the commands share: the typed schemas registered before Hydra composes (`start`, every
entry point incl. train.py) and, for `phi3v.predict`, `phi3v.export`, `phi3v.app` and
`phi3v.prepare`, usage errors printed as one line, the checks of an export directory and a dtype,
and a quiet console. Everything here runs before torch is imported, so a bad key is answered at once.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from omegaconf import DictConfig, OmegaConf

from phi3v.modeling.model_spec import DTYPES, SPEC_FILE

T = TypeVar("T")


class UsageError(Exception):
    """A bad command-line value; the message names the key (printed as one line, exit code 1)."""


def start(command: Callable[[], object]) -> None:
    """Run a Hydra command from its `__main__`: the typed config schemas first (composition reads them;
    registered here rather than at import, so importing a command changes nothing)."""
    from phi3v.config_schema import register_schemas

    register_schemas()
    command()


def run_command(check: Callable[[DictConfig], None], run: Callable[[DictConfig], T], cfg: DictConfig) -> T:
    """`check(cfg)`, then `run(cfg)`; a UsageError from either prints `error: <message>` on stderr and
    exits with status 1 (no traceback: the message says what to change)."""
    try:
        check(cfg)
        return run(cfg)
    except UsageError as problem:
        print(f"error: {problem}", file=sys.stderr)
        sys.exit(1)


def require(cfg: DictConfig, key: str, usage: str) -> None:
    """A mandatory key (`???` in the YAML) must be given; `usage` says what it is."""
    if OmegaConf.is_missing(cfg, key):
        raise UsageError(f"{key}= is required{usage}")


def check_export_dir(key: str, directory: str) -> None:
    """`directory` (the value of `key`) must be a phi3v export: a directory with model_spec.json."""
    if not Path(directory).is_dir():
        raise UsageError(f"{key}={directory}: no such directory")
    if not (Path(directory) / SPEC_FILE).is_file():
        raise UsageError(f"{key}={directory}: not a phi3v export (no {SPEC_FILE} in it)")


def check_dtype(dtype: str | None) -> None:
    """null (the export's own dtype) or a dtype name a model spec accepts."""
    if dtype is not None and dtype not in DTYPES:
        raise UsageError(f"dtype={dtype}: choose one of {', '.join(DTYPES)} (or null for the export's)")


def quiet_console() -> None:
    """No download progress bars and no third-party deprecation noise (phi3v.console) on the console."""
    from transformers.utils import logging as hf_logging

    from phi3v.console import quiet_third_party

    hf_logging.disable_progress_bar()
    quiet_third_party()
