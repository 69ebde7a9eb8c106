"""Resolving a local snapshot directory or a Hugging Face hub id to files on disk."""

from __future__ import annotations

import os
from pathlib import Path

from huggingface_hub import snapshot_download


def resolve_snapshot(
    path_or_id: str | os.PathLike,
    allow_patterns: list[str],
    revision: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    token: str | bool | None = None,
    local_files_only: bool = False,
) -> Path:
    """A directory holding the snapshot's files.

    A local directory is used as is. Anything else is a hub id: `snapshot_download` fetches only
    `allow_patterns`, or with `HF_HUB_OFFLINE=1` returns the copy already in the HF cache.
    """
    path = Path(path_or_id).expanduser()
    if path.is_dir():
        return path
    if path.exists():
        raise NotADirectoryError(f"{path} is a file; pass the snapshot directory that contains it")
    try:
        return Path(
            snapshot_download(
                repo_id=os.fspath(path_or_id),
                allow_patterns=allow_patterns,
                revision=revision,
                cache_dir=cache_dir,
                token=token,
                local_files_only=local_files_only,
            )
        )
    except Exception as error:  # name the input and the usual fixes; keep the original error chained
        raise OSError(
            f"could not find {path_or_id!r}: not a local directory, and the hub lookup failed ({error}). "
            "Pass a local snapshot path, or set HF_HUB_OFFLINE=1 with the files in the HF cache."
        ) from error
