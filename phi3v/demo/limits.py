"""What one demo process lets clients use: sizes, times, counts. conf/app.yaml has a key per field."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass


@dataclass(frozen=True)
class ServerLimits:
    """Args:
    max_upload_mb: a larger body (all its photos together) is refused (413) from its Content-Length, before
        it is read.
    max_photos: photos of one product in one request (a multipart form with more files is refused, 400).
    body_timeout_s: the whole body must arrive within this (408 otherwise): 30 s lets a 20 MB photo
        through a 5.3 Mbit/s uplink (a 4 MB phone photo through 1.1 Mbit/s), and frees the place of a
        client that stopped sending.
    header_timeout_s: a request's head (method, path, headers) must arrive within this after the
        connection opens or the previous answer ends; then the connection is closed (slow-header clients).
    max_connections: open connections (idle ones included, ~20 KB each); a request on one more is answered
        503. 512 stays under the usual limit of 1024 open files, and clients that open many connections
        and send nothing are closed after header_timeout_s.
    max_queue: predictions in the server at once (receiving, decoding, waiting, generating); one more
        gets 503 with Retry-After. Bodies in flight take at most max_queue x max_upload_mb of memory.
    decode_pixels: pixels decoded at once across uploads, ~12 bytes each at the peak (80 M: ~0.95 GB);
        at least max_pixels, so that the largest photo accepted can be decoded.
    drain_timeout_s: on SIGTERM/Ctrl-C, how long the running generation may take to finish before the
        process exits anyway (photos still waiting are answered 503 at once).
    """

    max_upload_mb: float = 20
    max_photos: int = 4
    body_timeout_s: float = 30
    header_timeout_s: float = 10
    max_connections: int = 512
    max_queue: int = 16
    decode_pixels: int = 80_000_000
    drain_timeout_s: float = 10

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1e6)

    @classmethod
    def keys(cls) -> tuple[str, ...]:
        return tuple(field.name for field in dataclasses.fields(cls))
