"""Read the artifacts an offline W&B run recorded, from its files alone (no network, no wandb API).

An offline run writes `<run dir>/wandb/offline-run-*/run-<id>.wandb`: a 7-byte header (":W&B", magic,
version) then LevelDB-style log blocks of 32 KiB, each chunk `crc32 (4) | length (2, little-endian) |
type (1: full, 2: first, 3: middle, 4: last)`, whose payloads are wandb_internal_pb2.Record messages.
`wandb sync` uploads exactly these records; artifact files are staged under WANDB_DATA_DIR.
"""

from __future__ import annotations

import json
import struct
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

BLOCK = 32 * 1024
CHUNK_HEADER = 7
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


@dataclass
class StagedArtifact:
    name: str
    type: str
    aliases: list[str]
    metadata: dict
    files: dict[str, Path]  # path inside the artifact -> staged copy on disk


def records(path: Path):
    from wandb.proto import wandb_internal_pb2

    data, position, payload = path.read_bytes(), CHUNK_HEADER, b""
    assert data[:4] == b":W&B", f"{path} is not a W&B transaction log"
    while position + CHUNK_HEADER <= len(data):
        left = BLOCK - position % BLOCK
        if left < CHUNK_HEADER:  # block trailer: padding
            position += left
            continue
        _, length, kind = struct.unpack("<IHB", data[position : position + CHUNK_HEADER])
        position += CHUNK_HEADER
        payload += data[position : position + length]
        position += length
        if kind in (FULL, LAST):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(payload)
            payload = b""
            yield record


def finished_records(log: Path, timeout_s: float = 30.0) -> list:
    """The records of a run's log once it holds the exit record: wandb-core writes the file in the
    background and may still be flushing it for a moment after `run.finish()` returns."""
    deadline = time.monotonic() + timeout_s
    while True:
        found = list(records(log))
        if any(record.WhichOneof("record_type") == "exit" for record in found) or time.monotonic() > deadline:
            return found
        time.sleep(0.2)


def offline_artifacts(run_dir: Path) -> list[StagedArtifact]:
    """Every artifact recorded by the offline W&B run(s) in `run_dir`/wandb."""
    found = []
    for log in sorted(Path(run_dir, "wandb").glob("offline-run-*/run-*.wandb")):
        for record in finished_records(log):
            if record.WhichOneof("record_type") != "artifact":
                continue
            artifact = record.artifact
            files = {entry.path: Path(entry.local_path) for entry in artifact.manifest.contents}
            found.append(StagedArtifact(artifact.name, artifact.type, list(artifact.aliases),
                                        json.loads(artifact.metadata or "{}"), files))
    return found


def history_counts(run_dir: Path) -> Counter:
    """How many history rows of the offline run carry each logged key (media such as tables and images
    count under their own key, e.g. "val/predictions"): a log call W&B dropped is missing here."""
    [log] = list((run_dir / "wandb").glob("offline-run-*/*.wandb"))
    counts = Counter()
    for record in finished_records(log):
        if record.WhichOneof("record_type") == "history":
            keys = {item.key or "/".join(item.nested_key) for item in record.history.item}
            counts.update({key.removesuffix("/_type") for key in keys})  # a medium is a dict with a _type
    return counts
