"""The demo's HTTP server: uvicorn (h11) serving the Starlette app of phi3v/demo/server.py.

What the library owns: parsing HTTP (a malformed request line, header or Content-Length is a 400
before the app runs; a request head over 16 KB too), keep-alive (an idle connection is closed after
5 s), the connection limit (`max_connections`: a request on one more connection is answered 503),
one event loop instead of a thread per connection, and graceful shutdown on SIGTERM/SIGINT (stop
accepting, let responses in progress finish for up to `drain_timeout_s`, then cancel them).

What we own, because uvicorn has no setting for it:
  - a deadline for a request's head (`header_timeout_s`, `HeadDeadline`): uvicorn's keep-alive timer
    stops at the first byte received, so a client that sends its headers one byte at a time would
    hold its connection, and a slot of `max_connections`, forever;
  - the body's deadline and size limit (phi3v/demo/uploads.py) and the scheduling of predictions
    (phi3v/demo/admission.py);
  - `DemoServer.shutdown` tells the workload to answer waiting photos 503 before uvicorn waits for
    the running one, and the exit status: uvicorn re-raises the signal it caught once it has shut
    down (so SIGTERM would end the process with 143); a graceful stop is a success here, status 0.
"""

from __future__ import annotations

import logging
import signal
import socket

import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from phi3v.demo.limits import ServerLimits

log = logging.getLogger(__name__)
KEEP_ALIVE_S = 5  # uvicorn's default: an idle connection between two requests is closed after this


class HeadDeadline(H11Protocol):
    """uvicorn's h11 protocol, plus: `header_timeout_s` after the connection opened, or after the
    previous response ended, it is closed unless a request is being answered. That covers a head sent
    byte by byte, and the rest of a body whose request was refused unread (uvicorn reads and drops it)."""

    header_timeout_s: float = 10.0  # set on the subclass `head_deadline` makes

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        self._arm_head_deadline()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._arm_head_deadline()

    def connection_lost(self, exc) -> None:
        self._head_deadline.cancel()
        super().connection_lost(exc)

    def _arm_head_deadline(self) -> None:
        if getattr(self, "_head_deadline", None) is not None:
            self._head_deadline.cancel()
        self._head_deadline = self.loop.call_later(self.header_timeout_s, self._head_deadline_passed)

    def _head_deadline_passed(self) -> None:
        answering = self.cycle is not None and not self.cycle.response_complete
        if not answering and not self.transport.is_closing():
            client = f"{self.client[0]}:{self.client[1]}" if self.client else "a client"
            log.debug("%s: no complete request in %g s, connection closed", client, self.header_timeout_s)
            self.transport.close()


def head_deadline(seconds: float) -> type[HeadDeadline]:
    return type("HeadDeadlineProtocol", (HeadDeadline,), {"header_timeout_s": seconds})


class DemoServer(uvicorn.Server):
    """uvicorn's server; at shutdown the waiting photos are answered 503 first (`on_drain`)."""

    def __init__(self, config: uvicorn.Config, on_drain=None):
        super().__init__(config)
        self.on_drain = on_drain

    async def shutdown(self, sockets=None) -> None:
        if self.on_drain is not None:
            self.on_drain()
        await super().shutdown(sockets)


def bind(host: str, port: int) -> socket.socket:
    """A listening socket (port 0: any free port, see `getsockname()`); connections made before the
    server runs wait in its backlog. Raises OSError (port in use, no such address)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(128)
    except OSError:
        sock.close()
        raise
    return sock


def make_server(app, limits: ServerLimits, on_drain=None) -> DemoServer:
    config = uvicorn.Config(
        app,
        http=head_deadline(limits.header_timeout_s),
        ws="none",
        lifespan="off",
        loop="asyncio",
        # uvicorn answers 503 once connections >= the limit, the new one included: +1 lets max_connections in.
        limit_concurrency=limits.max_connections + 1,
        timeout_keep_alive=KEEP_ALIVE_S,
        timeout_graceful_shutdown=limits.drain_timeout_s,
        log_config=None,  # the app's logging (Hydra's console) formats uvicorn's records too
        server_header=False,
    )
    return DemoServer(config, on_drain)


def serve(server: DemoServer, sock: socket.socket) -> None:
    """Serve until SIGTERM or Ctrl-C, then shut down gracefully and return (the caller exits 0)."""
    # uvicorn captures both signals while serving and raises the caught one again afterwards, with the
    # handlers it found installed: these let that land as "already handled" instead of killing us.
    previous = {sig: signal.signal(sig, _already_handled) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        server.run(sockets=[sock])
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _already_handled(signum, frame) -> None:
    log.info("%s: the server has shut down", signal.Signals(signum).name)
