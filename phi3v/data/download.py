"""Concurrent, resumable, verified download of product images.

`download_images` turns (key, url) items into one `DownloadResult` each, in the order given. An image
is kept only when it fully decodes (`inspect_image_bytes`); every other outcome is a drop with a stable
snake_case reason: `DOWNLOAD_REASONS`, `f"http_{status}"` for a final non-2xx status, or a key of
`phi3v.data.images.REASONS`. Bad input never raises; only local failures (e.g. a full disk) and Ctrl-C do.

Files are named by `image_file_stem(url)` (a hash), never by anything taken from the data, so neither a
key nor a URL can choose where a file lands. They are written atomically (phi3v.files: a hidden temporary
file in the same directory, then `os.replace`), so an interrupted run never leaves a half-written image
under a final name. A re-run reuses every valid file without a request and downloads again what is missing
or broken.
"""

from __future__ import annotations

import email.utils
import hashlib
import math
import os
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from urllib.parse import urlsplit

import requests
from tqdm import tqdm
from urllib3.exceptions import ReadTimeoutError

from phi3v.data.catalogue import PLACEHOLDERS
from phi3v.data.images import ImageRejected, inspect_image_bytes
from phi3v.files import atomic_write_bytes

MAX_REDIRECTS = 5  # CDNs use 1-2 hops; more is a loop or a tracking chain
MAX_RETRY_AFTER = 30.0  # seconds; a server asking for longer is treated as if it asked for 30
_CHUNK_BYTES = 64 * 1024  # streaming granularity: bounds overshoot past max_bytes to 64 KiB
_ACCEPT = "image/webp,image/png,image/jpeg,image/gif,image/*;q=0.8,*/*;q=0.5"  # no HEIC/SVG unless only that

DOWNLOAD_REASONS: dict[str, str] = {
    "missing_url": "no URL: None, NaN, empty, or a placeholder such as 'N.A.'",
    "bad_url": "not an http(s) URL with a host (file://, ftp://, data:, javascript:, relative, malformed)",
    "bad_redirect": "a redirect to a non-http(s) or malformed location",
    "too_many_redirects": f"more than {MAX_REDIRECTS} redirects",
    "timeout": "no connection within connect_timeout, a read slower than read_timeout, or a body slower "
    "than total_timeout",
    "connection_error": "DNS failure, refused or reset connection",
    "bad_response": "a response the HTTP client cannot process (bad encoding, malformed headers)",
    "too_large": "a body larger than max_bytes (by Content-Length or counted while streaming)",
    "http_<status>": "the final response had this non-2xx status, e.g. http_404",
    "interrupted": "cancelled by Ctrl-C (only internal: download_images then raises KeyboardInterrupt)",
}
"""Drop reasons of the network side. Image reasons (not_an_image, truncated, ...) are in images.REASONS."""


@dataclass(frozen=True)
class DownloadSettings:
    workers: int = 16  # concurrent downloads (threads): network-bound, decoding releases the GIL
    connect_timeout: float = 5.0  # seconds
    read_timeout: float = 20.0  # seconds per read; a server slower than this is dropped as "timeout"
    retries: int = 3  # extra attempts on connection errors, timeouts, 5xx and 429 (never on other 4xx)
    backoff: float = 0.5  # seconds; retry k (from 0) waits backoff * 2**k, or Retry-After on 429/503 (<= 30 s)
    max_bytes: int = 20_000_000  # larger bodies are dropped as "too_large"
    max_pixels: int = 64_000_000  # width * height above this is dropped as "too_many_pixels"
    user_agent: str = "phi3v-prepare/0.1"
    # Seconds for one attempt's whole body. read_timeout alone lets a server trickling a byte every
    # 19 s hold a worker for days; 120 s is ~10 MB/min, far below any CDN.
    total_timeout: float = 120.0

    def __post_init__(self) -> None:
        positive = ("workers", "connect_timeout", "read_timeout", "max_bytes", "max_pixels", "total_timeout")
        for name in positive:
            if not getattr(self, name) > 0:
                raise ValueError(f"DownloadSettings.{name} must be > 0, got {getattr(self, name)!r}")
        if self.retries < 0 or self.backoff < 0:
            raise ValueError(f"retries and backoff must be >= 0, got {self.retries!r} and {self.backoff!r}")


@dataclass(frozen=True)
class DownloadItem:
    key: str  # caller's row key, e.g. the product id; only copied to the result, never used as a path
    url: str


@dataclass(frozen=True)
class DownloadResult:
    key: str
    url: str
    path: Path | None  # where the verified image is stored (None when dropped)
    reason: str | None  # None when kept; else a stable snake_case reason
    detail: str = ""
    width: int = 0  # of the upright image (EXIF orientation applied)
    height: int = 0
    downloaded: bool = False  # False when an already valid file was reused (resume)


class _Failure(Exception):
    """A drop decided while fetching; `retryable` ones are tried again, after `wait` s when the server said so."""

    def __init__(self, reason: str, detail: str, retryable: bool = False, wait: float | None = None) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason, self.detail, self.retryable, self.wait = reason, detail, retryable, wait


class _Sessions:
    """One requests.Session per worker thread (a Session is not documented as thread-safe)."""

    def __init__(self, settings: DownloadSettings) -> None:
        self._settings = settings
        self._local = threading.local()
        self._created: list[requests.Session] = []
        self._lock = threading.Lock()

    def get(self) -> requests.Session:
        session = getattr(self._local, "session", None)
        if session is None:
            session = requests.Session()
            session.headers.update({"User-Agent": self._settings.user_agent, "Accept": _ACCEPT})
            session.max_redirects = MAX_REDIRECTS
            self._local.session = session
            with self._lock:
                self._created.append(session)
        return session

    def close(self) -> None:
        with self._lock:
            for session in self._created:
                session.close()


@dataclass(frozen=True)
class _Context:
    settings: DownloadSettings
    image_dir: Path
    sessions: _Sessions
    stop: threading.Event  # set on Ctrl-C: running downloads give up at their next chunk or retry


def image_file_stem(url: str) -> str:
    """The file name (without extension) of the image of `url`: the first 32 hex digits of sha256(url).

    Surrounding whitespace is ignored, as when downloading. 128 bits make a collision between two
    catalogue URLs practically impossible, and the name never depends on anything but the URL.
    """
    return hashlib.sha256(url.strip().encode("utf-8", "surrogatepass")).hexdigest()[:32]


def download_images(
    items: Sequence[DownloadItem],
    image_dir: str | os.PathLike,
    settings: DownloadSettings = DownloadSettings(),
    progress: bool = True,
) -> list[DownloadResult]:
    """Download and verify the image of every item; one result per item, in the order of `items`.

    Files are `image_dir / f"{image_file_stem(url)}.{format}"`. An existing valid file is reused without
    any request (downloaded=False); a broken leftover is replaced. Each distinct URL is fetched once.
    """
    directory = Path(image_dir)
    directory.mkdir(parents=True, exist_ok=True)
    results: list[DownloadResult | None] = [None] * len(items)
    needed_by: dict[str, list[int]] = {}  # URL -> indices of the items that use it
    for index, item in enumerate(items):
        problem = _url_problem(item.url)
        if problem is None:
            needed_by.setdefault(item.url.strip(), []).append(index)
        else:
            results[index] = DownloadResult(item.key, item.url, None, problem[0], problem[1])
    context = _Context(settings, directory, _Sessions(settings), threading.Event())
    with tqdm(total=len(items), desc="images", unit="img", disable=not progress) as bar:
        counts = {"kept": 0, "dropped": len(items) - sum(map(len, needed_by.values()))}
        bar.set_postfix(counts, refresh=False)
        bar.update(counts["dropped"])

        def record(url: str, result: DownloadResult) -> None:
            for index in needed_by[url]:
                results[index] = replace(result, key=items[index].key, url=items[index].url)
            counts["kept" if result.reason is None else "dropped"] += len(needed_by[url])
            bar.set_postfix(counts, refresh=False)
            bar.update(len(needed_by[url]))

        try:
            _run_jobs(list(needed_by), context, record)
        finally:
            context.sessions.close()
    done = [result for result in results if result is not None]
    assert len(done) == len(items), "every item gets exactly one result"
    return done


def _run_jobs(urls: list[str], context: _Context, record: Callable[[str, DownloadResult], None]) -> None:
    executor = ThreadPoolExecutor(max_workers=context.settings.workers, thread_name_prefix="phi3v-download")
    try:
        futures = {executor.submit(_obtain, url, context): url for url in urls}
        for future in as_completed(futures):
            record(futures[future], future.result())
    except BaseException:
        # Ctrl-C, or a local error such as a full disk: drop queued downloads, stop running ones early.
        context.stop.set()
        executor.shutdown(wait=False, cancel_futures=True)
        raise
    executor.shutdown(wait=True)


def _url_problem(url: object) -> tuple[str, str] | None:
    """(reason, detail) when `url` must not be fetched, None when it is an http(s) URL with a host."""
    if url is None or (isinstance(url, float) and math.isnan(url)):
        return "missing_url", "no URL"
    if not isinstance(url, str):
        return "bad_url", f"not a string but {type(url).__name__}"
    text = url.strip()
    if text.lower() in PLACEHOLDERS:
        return "missing_url", f"placeholder {_short(url)}"
    try:
        parts = urlsplit(text)
        if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
            return "bad_url", f"only http(s) URLs with a host are fetched, got {_short(url)}"
        requests.Request("GET", text).prepare()  # what requests would refuse (bad IDNA host, bad port, ...)
    except (ValueError, requests.RequestException) as error:
        return "bad_url", f"{_short(url)}: {error}"
    return None


def _short(text: str, limit: int = 120) -> str:
    """repr of `text`, cut to `limit` characters (data: URLs can be megabytes long)."""
    return repr(text if len(text) <= limit else text[:limit] + "...")


def _obtain(url: str, context: _Context) -> DownloadResult:
    """The result for one distinct URL (key and url are filled in per item by the caller)."""
    stem = image_file_stem(url)
    reused = _reuse_existing(context.image_dir, stem, context.settings)
    if reused is not None:
        return reused
    try:
        data, content_type = _fetch(url, context)
        fmt, width, height = inspect_image_bytes(data, context.settings.max_pixels)
    except _Failure as failure:
        return DownloadResult("", url, None, failure.reason, failure.detail)
    except ImageRejected as rejected:
        return DownloadResult("", url, None, rejected.reason, f"{rejected.detail} (Content-Type {content_type!r})")
    path = atomic_write_bytes(context.image_dir / f"{stem}.{fmt}", data)
    return DownloadResult("", url, path, None, "", width, height, downloaded=True)


def _reuse_existing(image_dir: Path, stem: str, settings: DownloadSettings) -> DownloadResult | None:
    """The result for a valid file already stored for `stem`; broken or surplus files for it are removed."""
    kept = None
    for path in sorted(image_dir.glob(f"{stem}.*")):  # the stem is hex: no glob metacharacters
        found = _inspect_stored(path, settings)
        if kept is None and found is not None and path.suffix == f".{found[0]}":
            kept = DownloadResult("", "", path, None, "", found[1], found[2], downloaded=False)
            continue
        try:
            path.unlink()  # a broken leftover, or a stale copy under another extension
        except OSError:
            pass  # e.g. a directory of that name: writing the new file will report it
    return kept


def _inspect_stored(path: Path, settings: DownloadSettings) -> tuple[str, int, int] | None:
    """(format, width, height) of a stored file, None when it would not be kept if downloaded now."""
    try:
        if path.stat().st_size > settings.max_bytes:
            return None
        return inspect_image_bytes(path.read_bytes(), settings.max_pixels)
    except (OSError, ImageRejected):
        return None


def _fetch(url: str, context: _Context) -> tuple[bytes, str]:
    """(body, Content-Type) of `url`, retrying what may succeed later; raises _Failure."""
    settings = context.settings
    for attempt in range(settings.retries + 1):
        try:
            return _get_once(context.sessions.get(), url, settings, context.stop)
        except _Failure as failure:
            if not failure.retryable or attempt == settings.retries:
                raise
            delay = failure.wait if failure.wait is not None else settings.backoff * 2**attempt
            if context.stop.wait(delay):
                raise _Failure("interrupted", "download cancelled") from failure
    raise AssertionError("unreachable: the last attempt returns or raises")


def _get_once(
    session: requests.Session, url: str, settings: DownloadSettings, stop: threading.Event
) -> tuple[bytes, str]:
    """One GET of `url` (redirects followed): (body, Content-Type), or _Failure."""
    timeout = (settings.connect_timeout, settings.read_timeout)
    invalid_location = (
        requests.exceptions.InvalidSchema,
        requests.exceptions.InvalidURL,
        requests.exceptions.MissingSchema,
    )
    try:
        with session.get(url, stream=True, timeout=timeout) as response:
            _check_status(response)
            return _read_body(response, settings, stop), response.headers.get("Content-Type", "")
    except requests.TooManyRedirects as error:
        raise _Failure("too_many_redirects", str(error)) from error
    except invalid_location as error:
        # The URL itself passed _url_problem, so only a redirect can have led here.
        raise _Failure("bad_redirect", str(error)) from error
    except requests.Timeout as error:  # ConnectTimeout and ReadTimeout while waiting for the headers
        raise _Failure("timeout", str(error), retryable=True) from error
    except (requests.ConnectionError, requests.exceptions.ChunkedEncodingError) as error:
        # requests reports a read timeout in the middle of the body as a ConnectionError wrapping urllib3's.
        timed_out = any(isinstance(arg, ReadTimeoutError) for arg in error.args)
        raise _Failure("timeout" if timed_out else "connection_error", str(error), retryable=True) from error
    except _Failure:
        raise
    except Exception as error:  # malformed headers, undecodable Content-Encoding, ...: the server's fault
        raise _Failure("bad_response", f"{type(error).__name__}: {error}") from error


def _check_status(response: requests.Response) -> None:
    status = response.status_code
    if 200 <= status < 300:
        return
    retryable = status == 429 or status >= 500  # overload and server errors may pass; other 4xx will not
    wait = _retry_after_seconds(response.headers.get("Retry-After")) if status in (429, 503) else None
    raise _Failure(f"http_{status}", f"HTTP {status} {response.reason}", retryable, wait)


def _retry_after_seconds(value: str | None) -> float | None:
    """Retry-After as seconds from now (delta-seconds or an HTTP date), clamped to [0, MAX_RETRY_AFTER]."""
    if value is None:
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():
        seconds = float(value)
    else:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None  # unparseable: fall back to exponential backoff
        if when.tzinfo is None:
            when = when.replace(tzinfo=timezone.utc)
        seconds = (when - datetime.now(timezone.utc)).total_seconds()
    return min(max(seconds, 0.0), MAX_RETRY_AFTER)


def _read_body(response: requests.Response, settings: DownloadSettings, stop: threading.Event) -> bytes:
    declared = response.headers.get("Content-Length", "").strip()
    if declared.isascii() and declared.isdigit() and int(declared) > settings.max_bytes:
        raise _Failure("too_large", f"Content-Length {declared} > max_bytes {settings.max_bytes}")
    deadline = time.monotonic() + settings.total_timeout
    body = bytearray()
    # Count what arrives too: Content-Length may be absent (chunked), wrong, or about a compressed body.
    for chunk in response.iter_content(chunk_size=_CHUNK_BYTES):
        body += chunk
        if len(body) > settings.max_bytes:
            raise _Failure("too_large", f"body exceeds max_bytes {settings.max_bytes} while streaming")
        if time.monotonic() > deadline:
            raise _Failure("timeout", f"body not complete after total_timeout {settings.total_timeout} s")
        if stop.is_set():
            raise _Failure("interrupted", "download cancelled")
    return bytes(body)
