"""The demo's web app: one self-contained page and a small JSON API (Starlette; served by uvicorn,
see phi3v/demo/serving.py).

Routes
  GET  /                        the page (page.html: inline CSS and JS, no external URL of any kind)
  GET  /favicon.svg, .ico       the icon (page.html links the SVG)
  GET  /api/info                what model answers, its prompt and fields, the gallery size and split counts
  GET  /api/gallery             the run's test products: true vs predicted fields
  GET  /gallery/<i>/thumbnail   a small JPEG of gallery product i (its first photo; .../thumbnail/<k>: photo k)
  GET  /gallery/<i>/photo       its photo as stored (.../photo/<k>: photo k; the page posts them when picked)
  POST /api/predict             one photo as the raw body, or one product's photos as the files of a multipart
                                form (at most max_photos), -> {text, fields: {<field name>: value, ...},
                                latency_s, queued_s}

Every error is a JSON `{"error": "..."}` with a 4xx/5xx status and a sentence for the user (what is
wrong, which limit, what to do); a 503 carries Retry-After. An unexpected failure is logged with its
traceback on the server and reported as "internal error" only. Starlette owns routing (only these
paths exist: `..`, encoded or not, and any other path are a 404) and the form parsing; the upload
rules are phi3v/demo/uploads.py, the scheduling of predictions phi3v/demo/admission.py.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from http import HTTPStatus
from importlib import resources

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from phi3v.data.images import ImageRejected
from phi3v.demo.access import TokenGate
from phi3v.demo.admission import Unavailable, Workload
from phi3v.demo.gallery import GalleryItem, thumbnail_jpeg
from phi3v.demo.limits import ServerLimits
from phi3v.demo.predictor import BadUpload, Predictor
from phi3v.demo.uploads import ClientGone, Refused, read_photos

log = logging.getLogger(__name__)
NO_STORE = {"Cache-Control": "no-store"}


class DemoState:
    """What every request reads: the predictor, the gallery and what /api/info says.

    Args:
        model_name: how /api/info names the model (the app passes no absolute path off loopback).
    """

    def __init__(self, predictor: Predictor, gallery: list[GalleryItem], counts: dict[str, int],
                 limits: ServerLimits, model_name: str | None = None):
        self.predictor = predictor
        self.gallery = gallery
        self.counts = counts
        self.limits = limits
        self.model_name = model_name or predictor.source
        self.workload = Workload(predictor, limits.max_queue, limits.decode_pixels)

    def info(self) -> dict:
        task = self.predictor.task
        fields = [{"name": spec.name, "label": spec.label, "type": spec.type} for spec in task.fields]
        return {"model": self.model_name, "question": task.question, "answer_format": task.answer, "fields": fields,
                "gallery_size": len(self.gallery), "split_counts": self.counts,
                "max_upload_mb": self.limits.max_upload_mb, "max_photos": self.limits.max_photos,
                "max_megapixels": self.predictor.max_pixels / 1e6}


def error(status: int, message: str, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status, {**NO_STORE, **(headers or {})})


def answered(route):
    """Expected failures become their status and sentence; a bug becomes a logged 500."""

    @functools.wraps(route)
    async def endpoint(request: Request) -> Response:
        try:
            return await route(request)
        except Refused as refused:
            return error(refused.status, str(refused), {"Connection": "close"} if refused.close else None)
        except BadUpload as problem:
            return error(HTTPStatus.BAD_REQUEST, str(problem))
        except Unavailable as busy:
            return error(HTTPStatus.SERVICE_UNAVAILABLE, str(busy), {"Retry-After": str(busy.retry_after_s)})
        except asyncio.CancelledError:  # uvicorn gave up waiting at shutdown (drain_timeout_s): say so, then stop
            return error(HTTPStatus.SERVICE_UNAVAILABLE, "The demo stopped before your photo's answer was ready. "
                         "Try again in a minute.", {"Retry-After": "60"})
        except ClientGone:
            log.info("%s left before sending the whole photo", request.client.host if request.client else "a client")
            return Response(status_code=HTTPStatus.BAD_REQUEST)  # nobody reads it; uvicorn drops it
        except Exception:  # a bug: the traceback goes to the server log, never to the page
            log.exception("request %s %s failed", request.method, request.url.path)
            return error(HTTPStatus.INTERNAL_SERVER_ERROR, "internal error (the server log has the details)")

    return endpoint


def demo(request: Request) -> DemoState:
    return request.app.state.demo


@answered
async def page(request: Request) -> Response:
    return Response(asset("page.html"), media_type="text/html; charset=utf-8", headers=NO_STORE)


async def favicon(request: Request) -> Response:
    return Response(asset("favicon.svg"), media_type="image/svg+xml", headers={"Cache-Control": "max-age=86400"})


@answered
async def info(request: Request) -> Response:
    return JSONResponse(demo(request).info(), headers=NO_STORE)


@answered
async def gallery(request: Request) -> Response:
    return JSONResponse([item.as_json(i) for i, item in enumerate(demo(request).gallery)], headers=NO_STORE)


@answered
async def gallery_file(request: Request) -> Response:
    items, index, kind = demo(request).gallery, request.path_params["index"], request.path_params["kind"]
    photo = request.path_params.get("photo", 0)
    if index >= len(items) or kind not in ("thumbnail", "photo"):
        raise Refused(HTTPStatus.NOT_FOUND, f"There is no {kind} of gallery product {index} "
                      f"(the gallery has {len(items)} products, numbered from 0).")
    if photo >= len(items[index].image_paths):
        raise Refused(HTTPStatus.NOT_FOUND, f"Gallery product {index} has no photo {photo} (it has "
                      f"{len(items[index].image_paths)}, numbered from 0).")
    path = items[index].image_paths[photo]
    try:
        if kind == "thumbnail":
            return Response(await run_in_threadpool(thumbnail_jpeg, path), media_type="image/jpeg")
        return Response(await run_in_threadpool(path.read_bytes), media_type="application/octet-stream")
    except (OSError, ImageRejected) as problem:
        log.warning("gallery product %d: %s", index, problem)
        raise Refused(HTTPStatus.NOT_FOUND, f"The photo of gallery product {index} cannot be read on the "
                      "server (the server log says why).") from problem


@answered
async def predict(request: Request) -> Response:
    state = demo(request)
    with state.workload.admitted():
        photos = await read_photos(request, state.limits.max_upload_bytes, state.limits.body_timeout_s,
                                   state.limits.max_photos)
        answer = await state.workload.answer(photos)
    return JSONResponse(answer.__dict__, headers=NO_STORE)


async def not_found(request: Request, problem: HTTPException) -> Response:
    """Starlette's 404 and 405, as sentences."""
    if problem.status_code == HTTPStatus.METHOD_NOT_ALLOWED:
        return error(problem.status_code, f"{request.method} is not accepted at {request.url.path}.",
                     dict(problem.headers or {}))
    return error(problem.status_code, f"There is no page at {request.url.path}.")


ROUTES = [
    Route("/", page), Route("/favicon.svg", favicon), Route("/favicon.ico", favicon),
    Route("/api/info", info), Route("/api/gallery", gallery),
    Route("/gallery/{index:int}/{kind}", gallery_file), Route("/gallery/{index:int}/{kind}/{photo:int}", gallery_file),
    Route("/api/predict", predict, methods=["POST"]),
]


def build_app(state: DemoState, token: str | None = None) -> Starlette:
    """The ASGI app; with `token`, every request but the favicon's must carry it (phi3v/demo/access.py)."""
    middleware = [Middleware(TokenGate, token=token)] if token else []
    app = Starlette(routes=ROUTES, middleware=middleware, exception_handlers={HTTPException: not_found})
    app.state.demo = state
    return app


@functools.cache
def asset(name: str) -> bytes:
    return resources.files("phi3v.demo").joinpath(name).read_bytes()
