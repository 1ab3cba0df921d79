"""Slow clients are cut off: a deadline for a request's headers, and a configurable idle
keep-alive timeout, beside the body timeout (:func:`service.parsing.read_body`, 408
``body_timeout``).

BentoML's workers serve HTTP with uvicorn, which gives an idle keep-alive connection 5 s after
a response (``timeout_keep_alive``) but sets no deadline on headers: a client that connects and
sends nothing, or sends a header byte every few seconds (slowloris), holds its connection and
a file descriptor for as long as it likes, and enough of them take every descriptor of the
worker. An ASGI middleware cannot help (the application is called only once the headers are
complete), and BentoML's service configuration offers neither setting, so the guard sits in
uvicorn's HTTP protocol: :func:`install` registers a subclass of the protocol uvicorn would
pick (httptools where installed, else h11) under uvicorn's ``"auto"`` name, which is the one
BentoML's worker asks for. It adds one timer per connection:

* started when the connection opens, and when the first bytes of a next request arrive on a
  kept-alive connection;
* cancelled when the request's headers are complete (the protocol makes the request's cycle);
* on expiry, the connection is answered ``408`` with the image API's error shape (code
  ``header_timeout``) when part of a request arrived, and closed (silently when nothing did).

Idle time between requests stays uvicorn's keep-alive timer, set here from the config too.

The same class makes a graceful stop (SIGTERM) lose nothing that was sent before it. uvicorn's
shutdown closes every connection that is between requests at once; a request whose bytes were
already in the socket's buffer, sent just before the signal but not yet read by a loop busy
with other work, was then reset (measured: 1 request in about 10 runs of 8 keep-alive clients).
Here such a connection gets :data:`SHUTDOWN_DRAIN_S` to show a request; one that begins is
answered, with ``Connection: close``, and the connection closes after it.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

log = logging.getLogger(__name__)

#: How long a connection between requests stays open once the server stops, for a request
#: already on its way: longer than the event loop is ever busy at a stretch (tens of ms when it
#: decodes a large image inline), short enough not to slow a stop (it takes about 1 s).
SHUTDOWN_DRAIN_S = 0.5

#: The guarded protocol class, once :func:`install` made it (uvicorn imports it by this name).
GuardedHTTPProtocol: type[asyncio.Protocol] | None = None


def install(header_timeout_s: float, keep_alive_timeout_s: float) -> None:
    """Make uvicorn's ``"auto"`` HTTP protocol the guarded one, in this process.

    Call it before uvicorn's server loads its configuration: the service module calls it at
    import, which BentoML's worker does before it starts uvicorn.
    """
    global GuardedHTTPProtocol
    from handserve.adapters import uvicorn as adapter  # uvicorn's internals, in one place

    GuardedHTTPProtocol = guarded(adapter.auto_protocol(), header_timeout_s, keep_alive_timeout_s)
    adapter.register_auto(f"{__name__}:GuardedHTTPProtocol")


def guarded(
    base: type[asyncio.Protocol], header_timeout_s: float, keep_alive_timeout_s: float
) -> type[asyncio.Protocol]:
    """``base`` (uvicorn's httptools or h11 protocol) with a header deadline per request."""
    body = json.dumps(
        {
            "error": {
                "code": "header_timeout",
                "message": f"the request's headers did not arrive within {header_timeout_s:g} s",
            }
        }
    ).encode()
    timeout_response = (
        b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\n"
        b"content-length: " + str(len(body)).encode() + b"\r\nconnection: close\r\n\r\n" + body
    )

    class Guarded(base):  # type: ignore[valid-type, misc]
        """uvicorn's protocol, with a deadline on each request's headers."""

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.timeout_keep_alive = keep_alive_timeout_s
            self._header_timer: asyncio.TimerHandle | None = None
            self._header_bytes = False  # part of a request arrived since the timer started
            self._stopping = False  # the server is shutting down (SIGTERM)

        def connection_made(self, transport: Any) -> None:
            super().connection_made(transport)
            self._start_header_timer()

        def connection_lost(self, exc: Exception | None) -> None:
            self._cancel_header_timer()
            super().connection_lost(exc)

        def data_received(self, data: bytes) -> None:
            cycle = self.cycle
            super().data_received(data)
            if self.cycle is not cycle:  # a request's headers are complete: it is served
                self._cancel_header_timer()
                if self._stopping:
                    self.cycle.keep_alive = False  # answered, then the connection closes
            elif cycle is None or cycle.response_complete:  # between requests: a next one
                self._header_bytes = True
                if self._header_timer is None:
                    self._start_header_timer()

        def shutdown(self) -> None:
            """The server stops: a connection between requests gets :data:`SHUTDOWN_DRAIN_S`
            for a request already on its way (uvicorn's own closes it at once)."""
            self._stopping = True
            if self.cycle is not None and not self.cycle.response_complete:
                super().shutdown()  # a request in progress: answered, then closed
            else:
                self.loop.call_later(SHUTDOWN_DRAIN_S, self._close_if_idle)

        def _close_if_idle(self) -> None:
            idle = self.cycle is None or self.cycle.response_complete
            if idle and not self._header_bytes and not self.transport.is_closing():
                self.transport.close()  # a request that began is left to the header timer

        def _start_header_timer(self) -> None:
            self._header_timer = self.loop.call_later(header_timeout_s, self._header_timeout)

        def _cancel_header_timer(self) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None
            self._header_bytes = False

        def _header_timeout(self) -> None:
            self._header_timer = None
            if self.transport.is_closing():
                return
            if self.cycle is not None and not self.cycle.response_complete:
                return  # headers completed meanwhile; the body timeout takes over
            if self._header_bytes:
                log.info("closing %s: headers not received in %g s", self.client, header_timeout_s)
                self.transport.write(timeout_response)
            self.transport.close()

    Guarded.__name__ = Guarded.__qualname__ = f"HeaderTimeout{base.__name__}"
    return Guarded
