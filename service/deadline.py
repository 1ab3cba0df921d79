"""A request that runs past ``timeout_s`` is answered 504 in the API's error shape, and stops.

BentoML's own timeout (``traffic.timeout``) answers ``{"error": "Not able to process the
request in N seconds"}`` from outside every middleware of the service, so clients of the image
API got a second error shape, and the work went on: decoding and model calls run in threads,
which cancelling the request does not stop (measured: a worker stayed busy 3-7 s after the 504).

:class:`Deadline` runs inside BentoML's stack, a little before BentoML's timeout (which stays,
``timeout_s`` + :data:`BACKSTOP_S` later, for anything that ignores this one). At the deadline it
answers 504 ``timeout`` itself, in the shape of the API the path belongs to (the Open Inference
Protocol's ``{"error": "..."}`` under ``/v2``), cancels the request, and marks it expired: the
request's own code calls :func:`check` before each image it decodes and before each model call,
and so stops at the next image, in whichever thread it runs (the mark is a context variable,
which ``anyio.to_thread`` carries into its threads).
"""

from __future__ import annotations

import asyncio
import json
import threading
from contextvars import ContextVar
from typing import Any

from service.errors import V2_PREFIX, ApiError

#: BentoML's own timeout is set this much later than ours: a backstop, never the first answer.
BACKSTOP_S = 5.0
#: Probes and metrics answer at once and must never be cut off by a slow model.
SKIP_PATHS = frozenset({"/livez", "/readyz", "/healthz", "/metrics"})

_expired: ContextVar[threading.Event | None] = ContextVar("handserve_expired", default=None)


class Expired(ApiError):
    """Raised by :func:`check` in a request whose deadline passed (its answer is already sent)."""

    def __init__(self) -> None:
        super().__init__("timeout", "the request ran past the server's timeout")


def check() -> None:
    """Stop here if the request this code works for has already been answered 504."""
    event = _expired.get()
    if event is not None and event.is_set():
        raise Expired


def timeout_body(path: str, timeout_s: float) -> bytes:
    """The 504's body, in the error shape of the API ``path`` belongs to."""
    err = ApiError("timeout", f"the request did not finish within the timeout ({timeout_s:g} s)")
    return json.dumps(err.v2_body() if path.startswith(V2_PREFIX) else err.body()).encode()


class Watch:
    """One request's deadline, from inside the task that answers it: a timer that, unless the
    answer has started, marks the request expired (:func:`check` raises from then on, in its
    threads too) and cancels the task.

    One timer and no task of its own: a task and a wait per request cost 33 µs, the timer
    about 2. Used by :class:`Deadline` and by the image API's short path (service.front).
    """

    __slots__ = ("_started", "_timer", "_token", "expired", "task", "timeout_s")

    def __init__(self, timeout_s: float) -> None:
        self.timeout_s = timeout_s
        self.task = asyncio.current_task()
        self.expired = threading.Event()
        self._started = False
        self._timer = asyncio.get_running_loop().call_later(timeout_s, self._expire)
        self._token = _expired.set(self.expired)

    def _expire(self) -> None:
        if not self._started and self.task is not None:
            self.expired.set()
            self.task.cancel()

    def answering(self) -> bool:
        """The answer starts now: True, and the deadline is over (as BentoML's own); False
        when it has passed, and the late answer must be dropped."""
        if self.expired.is_set():
            return False
        if not self._started:
            self._started = True
            self._timer.cancel()
        return True

    def close(self) -> None:
        """The request's code is done (answered, failed or cancelled)."""
        self._timer.cancel()
        _expired.reset(self._token)

    async def answer_timeout(self, send: Any, path: str) -> None:
        """The 504, once the request's work is over: the deadline's cancellation is spent
        first, so the answer can be sent."""
        if self.task is not None:
            while self.task.cancelling():
                self.task.uncancel()
        body = timeout_body(path, self.timeout_s)
        headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
        await send({"type": "http.response.start", "status": 504, "headers": headers})
        await send({"type": "http.response.body", "body": body})


class Deadline:
    """ASGI middleware: 504 ``timeout`` at ``timeout_s`` unless the response has started.

    It runs the request in its own task, as every middleware does, with a :class:`Watch`
    beside it: at the deadline the request is marked expired and its task cancelled; the
    middleware then answers the 504. Work in a thread does not see the cancellation until it
    returns; it sees the mark at its next image (:func:`check`) and stops there.
    """

    def __init__(self, app: Any, timeout_s: float) -> None:
        self.app = app
        self.timeout_s = timeout_s

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope.get("path") in SKIP_PATHS:
            await self.app(scope, receive, send)
            return
        watch = Watch(self.timeout_s)

        async def send_once(message: dict[str, Any]) -> None:
            if watch.answering():  # else answered 504 already: the late answer is dropped
                await send(message)

        try:
            await self.app(scope, receive, send_once)
        except asyncio.CancelledError:
            if not watch.expired.is_set():
                raise  # not ours (the client left, the server stops)
        finally:
            watch.close()
        if watch.expired.is_set():
            # Ours: the request was cancelled (or its work stopped at a check and its answer
            # was dropped); the client gets the 504 now.
            await watch.answer_timeout(send, str(scope.get("path", "")))
