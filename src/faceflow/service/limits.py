"""Limits that keep one process steady: body size, per-key rate, a bounded work pool with a timeout.

* :class:`BodyLimit` (ASGI middleware): a declared ``Content-Length`` over the limit gets 413 before
  a byte of the body is read; a body without one (chunked) is counted as it arrives and cut off at
  the limit with the same 413.
* :class:`RateLimiter`: a token bucket per API key (``rate`` per second, ``burst`` at once); an empty
  bucket answers 429 with ``Retry-After`` (whole seconds until the next token).
* :class:`WorkPool`: CPU work (decoding, models) runs in a fixed number of threads off the event loop;
  at most ``queue_size`` calls wait beyond those running, the next gets 503 with ``Retry-After``
  rather than an ever longer queue; a call that takes longer than its timeout gets 504 (its thread
  finishes the work, its slot stays taken until then, so the pool is never over-committed).
"""

from __future__ import annotations

import asyncio
import math
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, TypeVar

from faceflow.service.errors import ApiError

T = TypeVar("T")
Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Any]
Send = Callable[[Message], Any]
ASGIApp = Callable[[Scope, Receive, Send], Any]


def json_error_bytes(error: ApiError) -> bytes:
    import json

    return json.dumps(error.body()).encode()


class BodyLimit:
    """ASGI middleware: request bodies over ``limit`` bytes get 413 ``too_large``."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def _reject(self, send: Send) -> None:
        error = ApiError(413, "too_large", f"request body over the limit of {self.limit:,} bytes")
        body = json_error_bytes(error)
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                                (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None:
            try:
                too_big = int(declared) > self.limit
            except ValueError:
                too_big = False
            if too_big:
                await self._reject(send)
                return
        received = 0
        rejected = False
        started = False

        async def limited_receive() -> Message:
            nonlocal received, rejected
            message: Message = await receive()
            if message["type"] == "http.request" and not rejected:
                received += len(message.get("body", b""))
                if received > self.limit:
                    rejected = True
                    if not started:
                        await self._reject(send)
                    return {"type": "http.disconnect"}
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if rejected:
                return
            started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, guarded_send)
        except Exception:
            if not rejected:
                raise


class RateLimiter:
    """Token buckets by key id (in this process; with several workers each has its own)."""

    def __init__(self, rate: float, burst: int) -> None:
        self.rate = float(rate)
        self.burst = float(burst)
        self._buckets: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()

    def blocked(self, key: str) -> bool:
        """True when ``key`` has no token left now (nothing is taken)."""
        now = time.monotonic()
        with self._lock:
            tokens, last = self._buckets.get(key, (self.burst, now))
        return min(self.burst, tokens + (now - last) * self.rate) < 1.0

    def take(self, key: str) -> None:
        """Take a token for ``key``; :class:`ApiError` 429 with ``Retry-After`` when there is none."""
        now = time.monotonic()
        with self._lock:
            tokens, last = self._buckets.get(key, (self.burst, now))
            tokens = min(self.burst, tokens + (now - last) * self.rate)
            if tokens < 1.0:
                self._buckets[key] = (tokens, now)
                wait = max(1, math.ceil((1.0 - tokens) / self.rate))
                raise ApiError(429, "rate_limited", f"over {self.rate:g} requests per second for this key; "
                               f"retry in {wait} s", {"Retry-After": str(wait)})
            self._buckets[key] = (tokens - 1.0, now)
            if len(self._buckets) > 10_000:  # forget keys idle long enough to have a full bucket again
                horizon = now - self.burst / self.rate
                self._buckets = {k: v for k, v in self._buckets.items() if v[1] > horizon}


class WorkPool:
    """``threads`` workers and at most ``queue_size`` waiting calls (see the module docstring)."""

    def __init__(self, threads: int, queue_size: int, on_change: Callable[[int, int], None] | None = None) -> None:
        self.threads = threads
        self.capacity = threads + queue_size
        self._executor = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="faceflow-work")
        self._lock = threading.Lock()
        self._taken = 0
        self._running = 0
        self._on_change = on_change

    @property
    def waiting(self) -> int:
        """Calls accepted but not started yet (the queue depth)."""
        return max(0, self._taken - self._running)

    @property
    def taken(self) -> int:
        return self._taken

    def _changed(self) -> None:
        if self._on_change is not None:
            self._on_change(self.waiting, self._running)

    def _release(self, _: Future[Any]) -> None:
        with self._lock:
            self._taken -= 1
        self._changed()

    async def run(self, timeout: float, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` in the pool; 503 when full, 504 after ``timeout`` seconds."""
        with self._lock:
            if self._taken >= self.capacity:
                raise ApiError(503, "busy", "the server is busy: retry shortly", {"Retry-After": "1"})
            self._taken += 1

        def work() -> T:
            with self._lock:
                self._running += 1
            self._changed()
            try:
                return fn(*args)
            finally:
                with self._lock:
                    self._running -= 1

        try:
            future = self._executor.submit(work)
        except RuntimeError:  # shut down
            with self._lock:
                self._taken -= 1
            raise ApiError(503, "busy", "the server is shutting down", {"Retry-After": "1"}) from None
        future.add_done_callback(self._release)
        self._changed()
        try:
            return await asyncio.wait_for(asyncio.shield(asyncio.wrap_future(future)), timeout)
        except TimeoutError:
            future.cancel()  # drops it if it has not started; a running call finishes in its thread
            raise ApiError(504, "timeout", f"the request took longer than {timeout:g} s") from None

    def shutdown(self) -> None:
        """Finish the calls accepted so far, then stop the threads."""
        self._executor.shutdown(wait=True)
