"""Writing a file so that a reader finds the old file or the whole new one, never half of one.

The content goes to a hidden temporary file in the target's directory (same filesystem, so the final
`os.replace` is atomic); the temporary name is unique per call, so concurrent writers of one target
never share it. No fsync: after a power cut the target may be empty or short, which every reader of
these files (the manifest's check, the image verification) treats as missing and rebuilds.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO


@contextmanager
def atomic_write(target: str | os.PathLike, mode: str = "w", **open_args) -> Iterator[IO]:
    """A handle on a temporary file beside `target`, renamed over it when the block ends, deleted when
    the block raises (`target` is then untouched). `mode` and `open_args` are those of `open`."""
    target = Path(target)
    # Hidden (never matches a reader's `stem.*` glob); os.open applies the umask, unlike mkstemp's 0600.
    temporary = target.with_name(f".{target.name}.{uuid.uuid4().hex}.part")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(descriptor, mode, **open_args) as handle:
            yield handle
        os.replace(temporary, target)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def atomic_write_bytes(target: str | os.PathLike, data: bytes) -> Path:
    with atomic_write(target, "wb") as handle:
        handle.write(data)
    return Path(target)


def atomic_write_text(target: str | os.PathLike, text: str) -> Path:
    with atomic_write(target, "w", encoding="utf-8") as handle:
        handle.write(text)
    return Path(target)
