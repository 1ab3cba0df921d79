"""Keep-alive connections spread over the worker processes: a busy worker sheds one to an idle one.

BentoML's worker processes accept from one listening socket that they share (its process
manager passes the socket's file descriptor to each). The worker that wakes first for a new
connection accepts every connection waiting in the queue (uvloop and asyncio both drain it),
and HTTP/1.1 keep-alive then keeps each connection on its worker for as long as the client
lives. A load generator or a proxy that opens its connections at once can so land all of them
on one worker: measured on 2 cores with a MobileNetV2 export at 160 px, two clients made one
worker use a whole core while the other idled (about 225 requests/s, where the two workers
together answer 370-460; docs/benchmarks/balancing.md has the tables). Inference runs on the
event loop (see :mod:`service.inference`), so the busy worker does not even read its next
request while it computes.

The remedy stays within HTTP, so it works behind any client and any proxy: every worker
publishes, ten times a second, its share of a CPU core and how many connections sent it a
request in the last second, in a small file in the folder the workers of one server share
(:class:`LoadBoard`; the service names the folder by the workers' parent PID). A worker that is
busy (half a core or more) and holds at least two connections more than a peer answers some
of its connections with ``Connection: close`` (:class:`ConnectionBalancer`; half the
difference, so the two end level). Every HTTP client then opens a new connection for its next
request, as HTTP/1.1 requires (RFC 9112, section 9.6); the busy worker is computing at that
moment and the idle one is waiting in ``epoll``, so the idle one most likely accepts it (if
not, the next decision tries again). A worker decides on its ticks, and on a response when its
event loop has been too busy running queued requests to tick: a pile-up is shed while it is
being served, not after. It sheds at most once per cooldown (0.3 s), which leaves the peers
time to publish the connections they gained, so connections do not swing back and forth: a
gap of one connection is left alone.

Only HTTP/1.1 is balanced this way. The gRPC port listens with ``SO_REUSEPORT`` in every
worker, so the kernel already spreads its connections (see :mod:`service.v2_grpc`).
"""

from __future__ import annotations

import asyncio
import logging
import mmap
import os
import struct
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

log = logging.getLogger("handserve.balance")

#: One worker's slot: share of a core used, connections active, when (CLOCK_MONOTONIC, which
#: all processes of a machine share).
SLOT = struct.Struct("<ddd")
TICK_S = 0.1  # how often each worker measures itself and publishes
WINDOW_S = 1.0  # a connection that sent a request within this is "active"
COOLDOWN_S = 0.3  # between two shedding decisions of one worker: the peers publish meanwhile
STALE_S = 1.0  # a slot older than this is a worker stopped, restarting or gone: ignored
BUSY = 0.5  # share of a core from which a worker sheds: idle keep-alive clients stay put
MIN_GAP = 2  # connections more than the peer: with a gap of one, a move only swaps sides
IDLE = 0.2  # share of a core under which a worker leaves its core to a peer's model call


class LoadBoard:
    """The workers' published load: one fixed-size slot per worker in a shared, mapped file.

    Each worker writes only its own slot, so there is no lock; a reader may see a slot half
    written, which costs one decision made on a slightly stale figure, no more.
    """

    def __init__(self, path: Path, workers: int, index: int) -> None:
        if not 0 <= index < workers:
            raise ValueError(f"worker index {index} is outside 0..{workers - 1}")
        self.workers = workers
        self.index = index
        size = SLOT.size * workers
        # In a shared temporary folder: never through a link, never a file someone else made.
        fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o600)
        try:
            stat = os.fstat(fd)
            if hasattr(os, "getuid") and stat.st_uid != os.getuid():
                raise PermissionError(f"{path} belongs to another user")
            if stat.st_size < size:  # the first worker, or more workers than before
                os.ftruncate(fd, size)
            self._map = mmap.mmap(fd, size)
        finally:
            os.close(fd)

    def publish(self, cpu_share: float, connections: int, now: float) -> None:
        SLOT.pack_into(self._map, self.index * SLOT.size, cpu_share, connections, now)

    def peers(self, now: float) -> list[tuple[float, int]]:
        """``(cpu_share, connections)`` of every other worker that published recently."""
        found = []
        for i in range(self.workers):
            if i == self.index:
                continue
            share, connections, stamp = SLOT.unpack_from(self._map, i * SLOT.size)
            if stamp > 0 and now - stamp <= STALE_S:
                found.append((share, int(connections)))
        return found


class ConnectionBalancer:
    """One worker's side: which of its responses close their connection.

    :meth:`tick` measures and publishes this worker's load and decides how many connections
    to shed; :meth:`should_close` is asked once per response and spends that allowance on
    distinct connections.
    """

    def __init__(
        self,
        board: LoadBoard,
        *,
        clock: Callable[[], float] = time.monotonic,
        cpu_clock: Callable[[], float] = time.process_time,
        on_shed: Callable[[], None] | None = None,
        on_tick: Callable[[float, int], None] | None = None,
    ) -> None:
        self.board = board
        self.clock = clock
        self.cpu_clock = cpu_clock
        self.on_shed = on_shed  # counts each connection closed
        self.on_tick = on_tick  # gets (share of a core, active connections) each tick
        self.cpu_share = 0.0
        self.to_shed = 0
        self._active: dict[Any, float] = {}  # client address -> when it last sent a request
        self._last = (clock(), cpu_clock())
        self._quiet_until = 0.0

    def seen(self, client: Any) -> None:
        """A request arrived on the connection from ``client`` (its address and port)."""
        if client is not None:
            self._active[client] = self.clock()

    def should_close(self, client: Any) -> bool:
        """Whether the response to ``client`` should carry ``Connection: close``."""
        if self.clock() - self._last[0] >= TICK_S:
            # the loop has been busy with requests since the last tick (inline model calls):
            # decide now, not after the whole run of queued requests
            self.tick()
        if self.to_shed <= 0 or client not in self._active:  # None (no address) never is
            return False
        self.to_shed -= 1
        del self._active[client]  # it is gone from here now: do not count it again
        if self.on_shed is not None:
            self.on_shed()
        return True

    def tick(self) -> None:
        """Measure this worker's share of a core since the last tick, publish, decide."""
        now, cpu = self.clock(), self.cpu_clock()
        then, cpu_then = self._last
        self._last = (now, cpu)
        if now > then:
            self.cpu_share = max(0.0, (cpu - cpu_then) / (now - then))
        for client, seen in list(self._active.items()):
            if now - seen > WINDOW_S:
                del self._active[client]
        mine = len(self._active)
        self.board.publish(self.cpu_share, mine, now)
        if self.on_tick is not None:
            self.on_tick(self.cpu_share, mine)
        if now < self._quiet_until:
            return
        self.to_shed = 0
        if self.cpu_share < BUSY:
            return
        gap = max((mine - connections for _, connections in self.board.peers(now)), default=0)
        if gap >= MIN_GAP:
            self.to_shed = gap // 2
            self._quiet_until = now + COOLDOWN_S
            log.debug(
                "worker %d sheds %d of %d connections (%.0f%% of a core)",
                self.board.index + 1,
                self.to_shed,
                mine,
                100 * self.cpu_share,
            )

    def peers_idle(self) -> bool:
        """Every other worker published within the last second, at under :data:`IDLE` of a
        core: their cores are free for this worker's next model call (service.inference)."""
        peers = self.board.peers(self.clock())
        return len(peers) == self.board.workers - 1 and all(share < IDLE for share, _ in peers)

    async def run(self, tick_s: float = TICK_S) -> None:
        """Tick until cancelled (the worker's lifetime)."""
        while True:
            await asyncio.sleep(tick_s)
            try:
                self.tick()
            except Exception:  # never let balancing take the worker down
                log.exception("connection balancing failed; continuing")


class CloseToRebalance:
    """ASGI middleware: counts each HTTP request's connection and closes the shed ones.

    ``balancer`` returns the worker's :class:`ConnectionBalancer`, or None where there is
    none (one worker, balancing off, in-process tests): then it only passes requests on.
    """

    def __init__(self, app: Any, balancer: Callable[[], ConnectionBalancer | None]) -> None:
        self.app = app
        self.balancer = balancer

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        balancer = self.balancer() if scope["type"] == "http" else None
        if balancer is None:
            await self.app(scope, receive, send)
            return
        client = scope.get("client")
        balancer.seen(client)

        async def send_closing(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start" and balancer.should_close(client):
                headers = [
                    (k, v) for k, v in message.get("headers", []) if k.lower() != b"connection"
                ]
                message = {**message, "headers": [*headers, (b"connection", b"close")]}
            await send(message)

        await self.app(scope, receive, send_closing)


def start(folder: Path, workers: int, index: int, metrics: Any) -> ConnectionBalancer | None:
    """This worker's balancer over the load board in ``folder`` (``index`` is 0-based), its
    ticks published as the per-worker gauges; None (with a warning) where the board cannot be
    opened: serving goes on and connections stay where they land."""
    try:
        folder.mkdir(mode=0o700, exist_ok=True)
        board = LoadBoard(folder / "load", workers, index)
    except (OSError, ValueError) as exc:
        log.warning("connection balancing is off in this worker: %s", exc)
        return None

    def publish(cpu_share: float, connections: int) -> None:
        metrics.worker_cpu.set(cpu_share)
        metrics.worker_connections.set(connections)

    return ConnectionBalancer(board, on_shed=metrics.rebalanced.inc, on_tick=publish)
