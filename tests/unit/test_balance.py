"""Connection balancing between worker processes (service.balance), without a server.

Two workers are two :class:`LoadBoard` views of one real mapped file; clocks are driven by
hand so each decision is the one a given load must produce.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest

from service import balance
from service.balance import ConnectionBalancer, LoadBoard


class Clocks:
    """Wall and CPU clocks moved by the test: ``advance(wall, busy)`` spends ``busy`` of it."""

    def __init__(self) -> None:
        self.wall = 1000.0
        self.cpu = 0.0

    def advance(self, wall: float, busy: float) -> None:
        self.wall += wall
        self.cpu += wall * busy


def worker(path: Path, index: int, clocks: Clocks, workers: int = 2) -> ConnectionBalancer:
    board = LoadBoard(path, workers, index)
    return ConnectionBalancer(board, clock=lambda: clocks.wall, cpu_clock=lambda: clocks.cpu)


def clients(n: int, first_port: int = 40000) -> list[tuple[str, int]]:
    return [("127.0.0.1", first_port + i) for i in range(n)]


def publish_idle_peer(path: Path, now: float, connections: int = 0, share: float = 0.0) -> None:
    LoadBoard(path, 2, 1).publish(share, connections, now)


def after_one_tick(
    path: Path, clocks: Clocks, mine: int, *, peer: int = 0, busy: float = 1.0, peer_age: float = 0
) -> ConnectionBalancer:
    """Worker 0 after ``mine`` connections sent it a request, its peer published ``peer``
    connections ``peer_age`` seconds ago, and one tick passed with ``busy`` of a core used."""
    me = worker(path, 0, clocks)
    for client in clients(mine):
        me.seen(client)
    publish_idle_peer(path, clocks.wall - peer_age, connections=peer)
    clocks.advance(0.1, busy=busy)
    me.tick()
    return me


def test_board_round_trip_skips_own_and_stale_slots(tmp_path: Path) -> None:
    path = tmp_path / "load"
    boards = [LoadBoard(path, 3, i) for i in range(3)]
    boards[0].publish(0.9, 4, 100.0)
    boards[1].publish(0.1, 1, 100.0)
    boards[2].publish(0.3, 2, 98.5)  # 1.5 s old at 100.0
    assert boards[0].peers(100.0) == [(pytest.approx(0.1), 1)]
    assert boards[1].peers(100.0) == [(pytest.approx(0.9), 4)]
    assert boards[2].peers(99.0) == [(pytest.approx(0.9), 4), (pytest.approx(0.1), 1)]


def test_a_worker_that_never_published_is_not_a_peer(tmp_path: Path) -> None:
    assert LoadBoard(tmp_path / "load", 2, 0).peers(5.0) == []


def test_board_refuses_an_index_outside_the_workers(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"worker index 2 is outside 0\.\.1"):
        LoadBoard(tmp_path / "load", 2, 2)


def test_board_never_writes_through_a_link(tmp_path: Path) -> None:
    """The file lives in a shared temporary folder: a link planted there is refused."""
    target = tmp_path / "precious"
    target.write_bytes(b"keep")
    (tmp_path / "load").symlink_to(target)
    with pytest.raises(OSError):
        LoadBoard(tmp_path / "load", 2, 0)
    assert target.read_bytes() == b"keep"


def test_more_workers_than_the_file_holds_grow_it(tmp_path: Path) -> None:
    path = tmp_path / "load"
    LoadBoard(path, 2, 0).publish(0.5, 1, 10.0)
    wider = LoadBoard(path, 4, 3)
    wider.publish(0.2, 3, 10.0)
    assert LoadBoard(path, 4, 1).peers(10.0) == [
        (pytest.approx(0.5), 1),
        (pytest.approx(0.2), 3),
    ]


def test_busy_worker_sheds_half_the_gap_once_per_connection(tmp_path: Path) -> None:
    me = after_one_tick(tmp_path / "load", Clocks(), 4)
    shed: list[int] = []
    me.on_shed = lambda: shed.append(1)
    assert me.cpu_share == pytest.approx(1.0)
    assert me.to_shed == 2  # 4 against 0: two move, both end with two
    a, b, c, d = clients(4)
    assert me.should_close(a)
    assert not me.should_close(a), "a closed connection is not closed twice"
    assert me.should_close(b)
    assert not me.should_close(c) and not me.should_close(d)
    assert len(shed) == 2


@pytest.mark.parametrize(
    ("mine", "peer", "busy", "expected"),
    [
        (2, 0, 1.0, 1),  # the smallest gap that sheds
        (3, 2, 1.0, 0),  # a gap of one would only swap sides
        (4, 4, 1.0, 0),  # level already
        (8, 0, 0.4, 0),  # idle keep-alive connections are left where they are
        (8, 0, 0.6, 4),
        (1, 0, 1.0, 0),  # one busy connection: nothing to gain
    ],
)
def test_what_is_shed(tmp_path: Path, mine: int, peer: int, busy: float, expected: int) -> None:
    me = after_one_tick(tmp_path / "load", Clocks(), mine, peer=peer, busy=busy)
    assert me.to_shed == expected


def test_a_stale_peer_gets_nothing(tmp_path: Path) -> None:
    """A peer that stopped publishing (stopped, restarting) is no place to send connections."""
    me = after_one_tick(tmp_path / "load", Clocks(), 4, peer_age=balance.STALE_S + 0.5)
    assert me.to_shed == 0


def test_no_second_decision_within_the_cooldown(tmp_path: Path) -> None:
    """The peer publishes what it gained before this worker decides again."""
    path = tmp_path / "load"
    clocks = Clocks()
    me = after_one_tick(path, clocks, 6)
    assert me.to_shed == 3
    me.should_close(clients(6)[0])
    clocks.advance(0.1, busy=1.0)
    for client in clients(6)[1:]:
        me.seen(client)
    publish_idle_peer(path, clocks.wall)  # the peer has not published its gain yet
    me.tick()
    assert me.to_shed == 2, "the first decision is spent, not renewed"
    clocks.advance(balance.COOLDOWN_S, busy=1.0)
    for client in clients(6)[1:]:
        me.seen(client)
    publish_idle_peer(path, clocks.wall, connections=1)
    me.tick()
    assert me.to_shed == 2  # 5 against 1, decided afresh


def test_connections_quiet_for_the_window_stop_counting(tmp_path: Path) -> None:
    path = tmp_path / "load"
    clocks = Clocks()
    me = worker(path, 0, clocks)
    for client in clients(4):
        me.seen(client)
    clocks.advance(balance.WINDOW_S + 0.1, busy=1.0)
    me.seen(clients(1, first_port=50000)[0])
    me.tick()
    other = LoadBoard(path, 2, 1)
    assert other.peers(clocks.wall) == [(pytest.approx(1.0), 1)]


def test_a_response_decides_when_the_loop_was_too_busy_to_tick(tmp_path: Path) -> None:
    """Inline model calls hold the event loop: the queued requests' responses must not wait
    for the ticker to shed (the pile-up is worst right then)."""
    path = tmp_path / "load"
    clocks = Clocks()
    me = worker(path, 0, clocks)
    for client in clients(4):
        me.seen(client)
    publish_idle_peer(path, clocks.wall)
    clocks.advance(balance.TICK_S / 2, busy=1.0)
    assert not me.should_close(clients(4)[0]), "within a tick: the last decision holds"
    clocks.advance(balance.TICK_S, busy=1.0)  # no tick ran meanwhile
    assert me.should_close(clients(4)[0])
    assert me.to_shed == 1


def test_each_tick_reports_what_it_published(tmp_path: Path) -> None:
    clocks = Clocks()
    me = worker(tmp_path / "load", 0, clocks)
    ticks: list[tuple[float, int]] = []
    me.on_tick = lambda share, connections: ticks.append((share, connections))
    for client in clients(3):
        me.seen(client)
    clocks.advance(0.2, busy=0.25)
    me.tick()
    assert ticks == [(pytest.approx(0.25), 3)]


def test_run_ticks_until_cancelled(tmp_path: Path) -> None:
    path = tmp_path / "load"
    me = ConnectionBalancer(LoadBoard(path, 2, 0))
    me.seen(("127.0.0.1", 1))

    async def run_a_while() -> None:
        task = asyncio.create_task(me.run(tick_s=0.01))
        await asyncio.sleep(0.1)
        task.cancel()

    asyncio.run(run_a_while())
    stamp = LoadBoard(path, 2, 1).peers(time.monotonic())
    assert stamp and stamp[0][1] == 1


# ---------------------------------------------------------------------- the ASGI middleware
async def _respond(
    middleware: Any, client: tuple[str, int] | None, headers: list[tuple[bytes, bytes]]
) -> list[tuple[bytes, bytes]]:
    sent: list[dict[str, Any]] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": b"{}"})

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b""}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "http", "client": client, "path": "/predict", "method": "POST"}
    await middleware(app)(scope, receive, send)
    assert sent[1]["body"] == b"{}"
    return list(sent[0]["headers"])


def test_middleware_closes_only_the_shed_connections(tmp_path: Path) -> None:
    me = ConnectionBalancer(LoadBoard(tmp_path / "load", 2, 0))
    me.to_shed = 1

    def middleware(app: Any) -> Any:
        return balance.CloseToRebalance(app, balancer=lambda: me)

    kept = [(b"content-type", b"application/json"), (b"Connection", b"keep-alive")]
    first = asyncio.run(_respond(middleware, ("10.0.0.1", 5), kept))
    assert first == [(b"content-type", b"application/json"), (b"connection", b"close")]
    second = asyncio.run(_respond(middleware, ("10.0.0.1", 6), kept))
    assert second == kept, "one connection was to go, and it went"
    assert ("10.0.0.1", 6) in me._active


def test_middleware_without_a_balancer_passes_through(tmp_path: Path) -> None:
    def middleware(app: Any) -> Any:
        return balance.CloseToRebalance(app, balancer=lambda: None)

    headers = [(b"content-type", b"application/json")]
    assert asyncio.run(_respond(middleware, ("10.0.0.1", 5), headers)) == headers


def test_middleware_leaves_a_connection_without_address_open(tmp_path: Path) -> None:
    """A Unix socket gives no client address: nothing to count or close."""
    me = ConnectionBalancer(LoadBoard(tmp_path / "load", 2, 0))
    me.to_shed = 1

    def middleware(app: Any) -> Any:
        return balance.CloseToRebalance(app, balancer=lambda: me)

    assert asyncio.run(_respond(middleware, None, [])) == []
    assert me.to_shed == 1


def test_peers_are_idle_only_when_every_other_worker_says_so_recently(tmp_path: Path) -> None:
    """A worker may run a single image on every core (service.inference) only while each of
    its peers published, within the last second, that it uses under IDLE of a core."""
    path, clocks = tmp_path / "load", Clocks()
    me = worker(path, 0, clocks, workers=3)
    assert not me.peers_idle()  # nobody published: unknown is not idle
    for i in (1, 2):
        LoadBoard(path, 3, i).publish(0.01, 0, clocks.wall)
    assert me.peers_idle()
    LoadBoard(path, 3, 2).publish(balance.IDLE + 0.05, 1, clocks.wall)
    assert not me.peers_idle()  # one of them is working
    LoadBoard(path, 3, 2).publish(0.0, 0, clocks.wall)
    clocks.advance(balance.STALE_S + 0.1, busy=0.0)
    LoadBoard(path, 3, 1).publish(0.0, 0, clocks.wall)
    assert not me.peers_idle()  # worker 2 has not published for over a second
