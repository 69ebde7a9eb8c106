"""The photo(s) out of a POST /api/predict request: the raw body (one photo), or the files of a multipart
form (one product's photos, in the order sent: `curl -F photo=@front.jpg -F photo=@back.jpg`).

uvicorn (h11) parses HTTP: a malformed request line, header or Content-Length is answered 400 before
the app sees it, and a request head larger than 16 KB too. What HTTP servers leave to the application,
we own here: the body must arrive within `body_timeout_s` (408 otherwise, the connection closed),
and hold at most `max_upload_mb`, all its photos together (413: refused from its Content-Length before
a byte is read, or as soon as a chunked body has streamed past the limit). After a 413 the connection stays open while
uvicorn reads and drops the rest of the body, so that a client still sending it gets the answer
instead of a reset; the head deadline (phi3v/demo/serving.py) closes it if that takes longer than
`header_timeout_s`. A multipart form (`curl -F photo=@shoe.jpg`) is
read whole under the same limits, then parsed by Starlette (python-multipart): its 1 to `max_photos` files
are the photos, whatever their field names; any other body, whatever its Content-Type
(`curl --data-binary @shoe.jpg` says application/x-www-form-urlencoded), is the one photo.
"""

from __future__ import annotations

from http import HTTPStatus

import anyio
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException
from starlette.requests import ClientDisconnect, Request

MULTIPART = "multipart/form-data"


class Refused(Exception):
    """A request answered with an error status and a sentence for the user."""

    def __init__(self, status: HTTPStatus, message: str, close: bool = False):
        super().__init__(message)
        self.status = status
        self.close = close  # nothing more is read from this connection


class ClientGone(Exception):
    """The client closed the connection before the whole body arrived: nobody to answer."""


def megabytes(size: int) -> str:
    return f"{size / 1e6:.1f} MB"


async def read_photos(request: Request, max_bytes: int, timeout_s: float, max_photos: int) -> list[bytes]:
    """The photos' bytes, in order. Raises Refused (408, 411-free: chunked is fine, 413, 400) or ClientGone."""
    declared = request.headers.get("content-length")  # h11 has checked it is digits only
    limit = f"the limit is {max_bytes / 1e6:g} MB"
    if declared is not None and int(declared) > max_bytes:
        raise Refused(HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                      f"The file is {megabytes(int(declared))}; {limit}. Send a smaller photo.")
    chunks, received = [], 0
    try:
        with anyio.fail_after(timeout_s):
            async for chunk in request.stream():
                received += len(chunk)
                if received > max_bytes:
                    raise Refused(HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                                  f"The file is larger than {megabytes(max_bytes)}; {limit}. Send a smaller photo.")
                chunks.append(chunk)
    except TimeoutError:
        expected = f" of {megabytes(int(declared))}" if declared is not None else ""
        raise Refused(HTTPStatus.REQUEST_TIMEOUT,
                      f"The upload stopped: {megabytes(received)}{expected} arrived in {timeout_s:g} s. "
                      "Check the connection and send the photo again.", close=True) from None
    except ClientDisconnect:
        raise ClientGone from None
    body = b"".join(chunks)
    if request.headers.get("content-type", "").lower().startswith(MULTIPART):
        return await form_files(request, body, max_photos)
    return [body]


async def form_files(request: Request, body: bytes, max_photos: int) -> list[bytes]:
    """The files of a multipart form whose whole body is `body`: one product's 1 to `max_photos` photos."""

    async def replay() -> dict:
        return {"type": "http.request", "body": body, "more_body": False}

    scope = {key: value for key, value in request.scope.items() if key != "app"}  # errors raised, not turned into 400s
    try:  # one file more than allowed is parsed, so that our sentence answers it
        form = await Request(scope, replay).form(max_files=max_photos + 1, max_fields=16)
    except MultiPartException as problem:
        raise Refused(HTTPStatus.BAD_REQUEST, f"The form cannot be read ({problem.message}). "
                      "Send each photo as a file field, e.g. curl -F photo=@shoe.jpg <url>/api/predict") from None
    try:
        files = [value for _, value in form.multi_items() if isinstance(value, UploadFile)]
        if not files:
            raise Refused(HTTPStatus.BAD_REQUEST,
                          "The form has no file; send the photo as a file field, e.g. curl -F photo=@shoe.jpg "
                          "<url>/api/predict")
        if len(files) > max_photos:
            raise Refused(HTTPStatus.BAD_REQUEST,
                          f"The form has {len(files)} files; send at most {max_photos} photos of one product, e.g. "
                          "curl -F photo=@front.jpg -F photo=@back.jpg <url>/api/predict")
        return [await file.read() for file in files]
    finally:
        await form.close()
