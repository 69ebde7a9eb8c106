"""The demo's HTTP server: one self-contained page and a small JSON API, on Python's standard library.

Routes
  GET  /                        the page (page.html: inline CSS and JS, no external URL of any kind)
  GET  /api/info                what model answers, its prompt, the gallery size and split counts
  GET  /api/gallery             the run's test products: true vs predicted fields
  GET  /gallery/<i>/thumbnail   a small JPEG of gallery product i
  GET  /gallery/<i>/photo       its photo as stored (the page posts it to /api/predict when picked)
  POST /api/predict             body = the raw bytes of a photo -> {text, title, category, price, latency_s, ...}

Every error is a JSON `{"error": "..."}` with a 4xx/5xx status and a sentence for the user; an
unexpected failure is logged with its traceback on the server and reported as "internal error" only.
Requests are served by a thread each (ThreadingHTTPServer); the Predictor serialises generation.
"""

from __future__ import annotations

import json
import logging
import re
from functools import lru_cache
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources

from phi3v.data.images import ImageRejected
from phi3v.demo.gallery import GalleryItem, thumbnail_jpeg
from phi3v.demo.predictor import BadUpload, Predictor

log = logging.getLogger(__name__)
DISCARD_LIMIT = 512_000_000  # bytes of a refused upload still read (and dropped) to reply cleanly
_GALLERY_ROUTE = re.compile(r"^/gallery/(\d+)/(thumbnail|photo)$")


class DemoState:
    """What every request reads: the predictor, the gallery and the upload limit (bytes)."""

    def __init__(self, predictor: Predictor, gallery: list[GalleryItem], counts: dict[str, int],
                 max_upload_bytes: int = 20_000_000):
        self.predictor = predictor
        self.gallery = gallery
        self.counts = counts
        self.max_upload_bytes = max_upload_bytes

    def info(self) -> dict:
        template = self.predictor.template
        return {"model": self.predictor.source, "question": template.question, "answer_format": template.answer,
                "gallery_size": len(self.gallery), "split_counts": self.counts,
                "max_upload_mb": self.max_upload_bytes / 1e6}


class Failure(Exception):
    """A request that gets an error status and a message for the user."""

    def __init__(self, status: HTTPStatus, message: str):
        super().__init__(message)
        self.status = status


class DemoHandler(BaseHTTPRequestHandler):
    state: DemoState  # set on the subclass made by `make_server`
    server_version = "phi3v-demo"

    def do_GET(self) -> None:  # http.server's naming
        self._respond(self._get)

    def do_POST(self) -> None:
        self._respond(self._post)

    def _get(self) -> tuple[HTTPStatus, str, bytes]:
        path = self.path.split("?", 1)[0]
        if path == "/":
            return HTTPStatus.OK, "text/html; charset=utf-8", page()
        if path == "/api/info":
            return _json(self.state.info())
        if path == "/api/gallery":
            return _json([item.as_json(i) for i, item in enumerate(self.state.gallery)])
        match = _GALLERY_ROUTE.match(path)
        if match:
            return self._gallery_file(int(match.group(1)), match.group(2))
        raise Failure(HTTPStatus.NOT_FOUND, f"no page at {path}")

    def _gallery_file(self, index: int, kind: str) -> tuple[HTTPStatus, str, bytes]:
        if index >= len(self.state.gallery):
            raise Failure(HTTPStatus.NOT_FOUND, f"the gallery has {len(self.state.gallery)} products, not {index + 1}")
        path = self.state.gallery[index].image_path
        try:
            if kind == "thumbnail":
                return HTTPStatus.OK, "image/jpeg", thumbnail_jpeg(path)
            return HTTPStatus.OK, "application/octet-stream", path.read_bytes()
        except (OSError, ImageRejected) as problem:
            message = f"the photo of gallery product {index} cannot be read: {problem}"
            raise Failure(HTTPStatus.NOT_FOUND, message) from problem

    def _post(self) -> tuple[HTTPStatus, str, bytes]:
        if self.path.split("?", 1)[0] != "/api/predict":
            raise Failure(HTTPStatus.NOT_FOUND, f"no endpoint at {self.path}")
        answer = self.state.predictor.answer(self._body())
        return _json(answer.__dict__)

    def _body(self) -> bytes:
        """The request body, refused unread when it is larger than the upload limit."""
        length = self.headers.get("Content-Length")
        if length is None or not length.isdigit():
            raise Failure(HTTPStatus.LENGTH_REQUIRED, "send the photo as the request body, with a Content-Length")
        size, limit = int(length), self.state.max_upload_bytes
        if size > limit:
            self._discard(size)
            raise Failure(HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                          f"The file is {size / 1e6:.1f} MB; the limit is {limit / 1e6:.0f} MB. Send a smaller photo.")
        return self.rfile.read(size)

    def _discard(self, size: int) -> None:
        """Read and drop a refused body so the client, still sending, gets the answer instead of a reset.
        Bodies over DISCARD_LIMIT are not worth the bandwidth: the connection is closed on them unread."""
        self.close_connection = True  # nothing after a refused body is parsed as the next request
        if size > DISCARD_LIMIT:
            return
        while size > 0:
            chunk = self.rfile.read(min(size, 1 << 20))
            if not chunk:
                return
            size -= len(chunk)

    def _respond(self, route) -> None:
        try:
            status, kind, body = route()
        except Failure as failure:
            status, kind, body = _json({"error": str(failure)}, failure.status)
        except BadUpload as problem:
            status, kind, body = _json({"error": str(problem)}, HTTPStatus.BAD_REQUEST)
        except Exception:  # a bug: the traceback goes to the server log, never to the page
            log.exception("request %s %s failed", self.command, self.path)
            status, kind, body = _json({"error": "internal error (the server log has the details)"},
                                       HTTPStatus.INTERNAL_SERVER_ERROR)
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args) -> None:
        log.info("%s %s", self.address_string(), format % args)


def _json(payload, status: HTTPStatus = HTTPStatus.OK) -> tuple[HTTPStatus, str, bytes]:
    return status, "application/json", json.dumps(payload).encode()


@lru_cache(maxsize=1)
def page() -> bytes:
    return resources.files("phi3v.demo").joinpath("page.html").read_bytes()


def make_server(state: DemoState, host: str = "127.0.0.1", port: int = 7860) -> ThreadingHTTPServer:
    """A server bound to (host, port) (port 0: any free port, see `server.server_address`); not yet serving."""
    handler = type("BoundDemoHandler", (DemoHandler,), {"state": state})
    server = ThreadingHTTPServer((host, port), handler)
    server.daemon_threads = True  # Ctrl-C does not wait for open keep-alive connections
    return server
