"""How the demo's photos share the machine: how many are taken in, how many pixels are decoded at once,
one generation at a time.

A prediction passes three gates (`Workload`):
  1. admission: at most `max_queue` predictions in the server (receiving, decoding, waiting, generating);
     one more is answered 503 with a Retry-After estimated from recent generations.
  2. decoding: the pixel count of the request's photos (one product's, together at most max_pixels) is
     read from their headers, then they are decoded and
     preprocessed (in a worker thread) while holding that many pixels of a `decode_pixels` budget:
     decoded memory is bounded by the budget (measured: 11.7 bytes per pixel at the peak for a 40 MP
     PNG, decoding and preprocessing together; Pillow holds RGB in 4 bytes per pixel, then the processor's
     arrays), whatever the number of uploads; small photos pass while big ones wait. After a big photo
     the freed memory is handed back to the system (`return_freed_memory`) before its pixels are.
  3. generation: one at a time, in arrival order, on one long-lived thread (`ModelThread`).
`drain()` (SIGTERM) lets the running generation finish and answers every waiting photo 503 at once.

Why our own `Capacity` and `ModelThread`: asyncio and anyio have semaphores and limiters of unit
weight only (a photo must hold its pixel count), none can be closed so that its waiters leave at
once, and the threads of a ThreadPoolExecutor or of anyio are joined at exit, so a generation still
running when the drain time is up would hold the process; the model thread is a daemon thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import functools
import logging
import math
import queue
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import TypeVar

from anyio import to_thread

from phi3v.demo.predictor import Answer, Predictor

log = logging.getLogger(__name__)
T = TypeVar("T")
TRIM_PIXELS = 4_000_000  # photos from this size on (~50 MB decoded) hand their memory back to the system


class Unavailable(Exception):
    """The server cannot take this photo now: 503, the message for the user, and when to come back."""

    def __init__(self, message: str, retry_after_s: int):
        super().__init__(message)
        self.retry_after_s = retry_after_s


class Closed(Exception):
    """The Capacity was closed (the server is shutting down) before this waiter got its share."""


class Capacity:
    """A weighted semaphore on the event loop: `acquire(n)` waits until n units are free. Waiters are
    served in arrival order, except that one which fits is not held up by an earlier one which does
    not. `close()` makes every waiter, and every later `acquire`, raise Closed."""

    def __init__(self, total: int):
        self.total = self.free = total
        self.closed = False
        self._waiters: list[tuple[int, asyncio.Future]] = []

    async def acquire(self, amount: int) -> None:
        if amount > self.total:
            raise ValueError(f"asked for {amount} of a capacity of {self.total}")
        if self.closed:
            raise Closed
        if amount <= self.free:
            self.free -= amount
            return
        entry = (amount, asyncio.get_running_loop().create_future())
        self._waiters.append(entry)
        try:
            await entry[1]
        except asyncio.CancelledError:
            if entry in self._waiters:
                self._waiters.remove(entry)
            elif entry[1].done() and not entry[1].cancelled() and entry[1].exception() is None:
                self.release(amount)  # granted just before the cancellation arrived
            raise

    def release(self, amount: int) -> None:
        self.free += amount
        for entry in list(self._waiters):
            wanted, future = entry
            if wanted <= self.free:
                self._waiters.remove(entry)
                self.free -= wanted
                future.set_result(None)

    def close(self) -> None:
        self.closed = True
        for _, future in self._waiters:
            future.set_exception(Closed())
        self._waiters.clear()

    @contextlib.asynccontextmanager
    async def holding(self, amount: int):
        await self.acquire(amount)
        try:
            yield
        finally:
            self.release(amount)


class ModelThread:
    """One daemon thread that runs the model's calls in order; `await run(fn, *args)` from the loop."""

    def __init__(self):
        self.busy = False  # a call is running
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        threading.Thread(target=self._work, name="phi3v-model", daemon=True).start()

    async def run(self, function: Callable[..., T], *args) -> T:
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._jobs.put((loop, future, function, args))
        return await future

    def _work(self) -> None:
        while True:
            loop, future, function, args = self._jobs.get()
            self.busy = True
            try:
                result, error = function(*args), None
            except BaseException as problem:  # handed to the waiting request, which reports it
                result, error = None, problem
            finally:
                self.busy = False
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits any more
                loop.call_soon_threadsafe(_settle, future, result, error)


@functools.cache
def _libc():
    name = ctypes.util.find_library("c") if sys.platform.startswith("linux") else None
    return ctypes.CDLL(name) if name else None


def return_freed_memory() -> None:
    """glibc keeps memory freed by a thread in that thread's arena, for reuse by the same arena: after
    a burst of big photos decoded on many worker threads the process would keep each arena's high-water
    mark, and the next burst would add to it (measured, 3 bursts of 12 x 40 MP: peak +0.95, +0.95, then
    +1.4 GB over the start). malloc_trim hands free pages of every arena back; elsewhere: nothing to do."""
    libc = _libc()
    if libc is not None and hasattr(libc, "malloc_trim"):
        libc.malloc_trim(0)


def _settle(future: asyncio.Future, result, error: BaseException | None) -> None:
    if future.cancelled():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)


class Workload:
    """The predictions in flight. Create it inside the server's event loop (the gates live there).

    Args:
        predictor: the model.
        max_queue: predictions in the server at once; more are answered 503.
        decode_pixels: pixels decoded at once across uploads (>= predictor.max_pixels).
    """

    def __init__(self, predictor: Predictor, max_queue: int, decode_pixels: int):
        if decode_pixels < predictor.max_pixels:
            raise ValueError(f"decode_pixels={decode_pixels} < max_pixels={predictor.max_pixels}")
        self.predictor = predictor
        self.max_queue = max_queue
        self.in_flight = 0
        self.draining = False
        self._decoding = Capacity(decode_pixels)
        self._model = Capacity(1)
        self._thread = ModelThread()
        self._generation_s = 1.0  # running mean of recent generations, for Retry-After

    @contextlib.contextmanager
    def admitted(self) -> Iterator[None]:
        """One prediction's place in the server; raises Unavailable when full or shutting down."""
        if self.draining:
            raise Unavailable("The demo is shutting down. Try again in a minute.", 60)
        if self.in_flight >= self.max_queue:
            wait = max(1, math.ceil(self.in_flight * self._generation_s))
            raise Unavailable(f"The demo is busy: {self.in_flight} photos are ahead of yours (the limit is "
                              f"{self.max_queue}). Try again in about {wait} s.", wait)
        self.in_flight += 1
        try:
            yield
        finally:
            self.in_flight -= 1

    async def answer(self, data: bytes | list[bytes]) -> Answer:
        """Decode one product's photo(s) within the pixel budget, then generate in turn. Raises BadUpload or
        Unavailable."""
        start = time.perf_counter()
        pixels = await to_thread.run_sync(self.predictor.pixels, data)
        try:
            waiting = time.perf_counter()
            async with self._decoding.holding(pixels):
                queued = time.perf_counter() - waiting
                inputs = await to_thread.run_sync(self.predictor.prepare, data)
                if pixels >= TRIM_PIXELS:  # the decoded photo is freed now; give its memory back first
                    await to_thread.run_sync(return_freed_memory)
            waiting = time.perf_counter()
            async with self._model.holding(1):
                queued += time.perf_counter() - waiting
                generating = time.perf_counter()
                text = await self._thread.run(self.predictor.generate, inputs)
                self._generation_s = 0.8 * self._generation_s + 0.2 * (time.perf_counter() - generating)
        except Closed:
            raise Unavailable("The demo is shutting down. Try again in a minute.", 60) from None
        return self.predictor.parsed(text, time.perf_counter() - start - queued, queued)

    @property
    def generating(self) -> bool:
        """A generation is running (after a drain: one that outlived drain_timeout_s)."""
        return self._thread.busy

    def drain(self) -> None:
        """Shutting down: the running generation finishes, every photo still waiting gets 503 now."""
        self.draining = True
        self._decoding.close()
        self._model.close()
