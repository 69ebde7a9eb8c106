"""Experiment loggers. W&B works online, offline or not at all without ever blocking training.

Lightning is imported when a logger is built, so the config checks read `MODES` without it."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from lightning.pytorch.loggers import CSVLogger, WandbLogger

log = logging.getLogger(__name__)
MODES = ("auto", "online", "offline", "disabled")


def wandb_credentials_present() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    netrc = Path(os.environ.get("NETRC", Path.home() / ".netrc"))
    return netrc.is_file() and "api.wandb.ai" in netrc.read_text(errors="ignore")


def resolve_mode(mode: str) -> str:
    if mode not in MODES:
        raise ValueError(f"logger.mode must be one of {MODES}, got {mode!r}")
    if os.environ.get("WANDB_MODE") in ("offline", "disabled", "online") and mode == "auto":
        return os.environ["WANDB_MODE"]
    if mode == "auto":
        return "online" if wandb_credentials_present() else "offline"
    return mode


def build_wandb_logger(
    save_dir: str | Path,
    project: str = "phi3v",
    entity: str | None = None,
    mode: str = "auto",
    tags: list[str] | None = None,
    init_timeout: int = 30,
    name: str | None = None,
    quiet: bool = True,
) -> WandbLogger:
    """A WandbLogger writing into `save_dir` (the run dir).

    The run's files go to `<run dir>/wandb` (`save_dir` becomes wandb.init's `dir`), and so do the
    files W&B stages for artifacts and table media (see `stage_wandb_files_in`). With credentials but
    no network, init gives up after `init_timeout` seconds instead of blocking for minutes. `quiet`
    drops W&B's console banner and its end-of-run history and summary (~30 lines of sparklines after
    the run's own summary); the run's name and link, and warnings, are still printed.
    """
    import wandb
    from lightning.pytorch.loggers import WandbLogger

    save_dir = Path(save_dir)
    stage_wandb_files_in(save_dir / "wandb")
    resolved = resolve_mode(mode)
    if resolved == "offline":
        log.info("W&B offline (no credentials). Upload later with: wandb sync %s/wandb/offline-run-*", save_dir)
    logger = WandbLogger(
        project=project, entity=entity, save_dir=str(save_dir), mode=resolved, tags=list(tags or []), name=name,
        settings=wandb.Settings(init_timeout=init_timeout, quiet=quiet),
    )
    # Lightning always passes `anonymous` to wandb.init, and W&B warns once that the setting "has no
    # effect". Only Lightning's private init dict could drop it; the line is left as it is.
    return logger


def build_csv_logger(save_dir: str | Path) -> CSVLogger:
    from lightning.pytorch.loggers import CSVLogger

    return CSVLogger(save_dir=str(save_dir), name="csv", version="")


def stage_wandb_files_in(directory: Path) -> None:
    """Make W&B stage artifact and table files in `directory` instead of ~/.local/share/wandb.

    wandb (0.31) reads its staging directory from the WANDB_DATA_DIR environment variable only: no
    wandb.Settings field or init argument sets it (wandb/sdk/artifacts/staging.py), so this is the one
    setting phi3v passes through the environment. An offline run's table media and artifacts staged
    there are what `wandb sync` uploads later, so they must stay with the run, not in the home dir."""
    directory.mkdir(parents=True, exist_ok=True)
    os.environ["WANDB_DATA_DIR"] = str(directory)
