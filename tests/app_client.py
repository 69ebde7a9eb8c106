"""The web demo served in-process as it is in production (uvicorn + phi3v.demo.serving on a socket of
127.0.0.1, in a thread), and a client speaking HTTP to it: http.client, or raw bytes for what no
well-behaved client sends."""

from __future__ import annotations

import contextlib
import dataclasses
import http.client
import io
import socket
import threading
import time

from PIL import Image

from phi3v.demo.limits import ServerLimits
from phi3v.demo.server import DemoState, build_app
from phi3v.demo.serving import bind, make_server


@contextlib.contextmanager
def serving(predictor, gallery=(), counts=None, token: str | None = None, model_name: str | None = None, **limits):
    """(state, port) of a server running until the block ends; `limits` override ServerLimits fields."""
    state = DemoState(predictor, list(gallery), counts or {}, dataclasses.replace(ServerLimits(), **limits),
                      model_name)
    sock = bind("127.0.0.1", 0)
    server = make_server(build_app(state, token), state.limits, on_drain=state.workload.drain)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.01)
    try:
        yield state, sock.getsockname()[1]
    finally:
        server.should_exit = True
        thread.join(30)
        sock.close()


def request(port: int, method: str, path: str, body: bytes | None = None, headers: dict | None = None,
            timeout: float = 60):
    """(status, headers, body) of one request on a new connection."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        connection.request(method, path, body=body, headers=headers or {})
        response = connection.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        connection.close()


def raw(port: int, data: bytes, wait: float = 10) -> tuple[bytes, float, bool]:
    """Send bytes as they are; (what came back, seconds until the server closed or `wait` passed,
    whether the server closed the connection)."""
    start = time.monotonic()
    received, closed = b"", False
    with socket.create_connection(("127.0.0.1", port), timeout=wait) as sock:
        sock.sendall(data)
        try:
            while chunk := sock.recv(65536):
                received += chunk
            closed = True
        except TimeoutError:
            pass
        except ConnectionResetError:
            closed = True
    return received, time.monotonic() - start, closed


def status_of(response: bytes) -> int:
    return int(response.split(b" ", 2)[1]) if response.startswith(b"HTTP/1.1 ") else 0


def encoded(image: Image.Image, fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt)
    return buffer.getvalue()


def multipart(files: list[tuple[str, str, bytes]], fields: dict[str, str] | None = None,
              boundary: str = "phi3v-test-boundary") -> tuple[bytes, dict]:
    """A multipart/form-data body as `curl -F name=@file` sends it, and its Content-Type header."""
    parts = [f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode()
             for name, value in (fields or {}).items()]
    for name, filename, data in files:
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; filename="{filename}"\r\n'
                     f"Content-Type: application/octet-stream\r\n\r\n".encode() + data + b"\r\n")
    body = b"".join(parts) + f"--{boundary}--\r\n".encode()
    return body, {"Content-Type": f"multipart/form-data; boundary={boundary}"}
