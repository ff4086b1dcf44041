"""The drain contract and the bounds on connections, in-process: the service's app under the test client,
the SIGTERM handler against a stand-in for uvicorn's server, and the guarded protocol under a real uvicorn
in a thread. The same, through real `bentoml serve` processes and HAProxy: tests/test_replicas.py."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import threading
import time
from contextlib import contextmanager
from typing import Iterator

import pytest
import uvicorn

from serving.framework import GuardedHTTPProtocol
from serving.lifecycle import Drain
from tests.conftest import TIMER_SLACK_S

IN_PROCESS = not os.environ.get("CAPSNET_TEST_URL")


@pytest.mark.skipif(not IN_PROCESS, reason="sets the in-process service's drain state")
def test_while_draining_readiness_is_503_and_every_answer_closes_its_connection(client, service_in_process, digits):
    images, _, expected = digits
    drain = service_in_process.DRAIN
    drain.draining = True
    try:
        ready = client.get("/readyz")
        assert ready.status_code == 503 and ready.headers["connection"] == "close"
        assert client.get("/livez").status_code == 200
        answer = client.post("/classify", json={"images": images[:2].tolist()})
        assert answer.status_code == 200 and answer.json()["labels"] == expected[:2].tolist()
        assert answer.headers["connection"] == "close"
        refused = client.post("/classify", content=b"x", headers={"Content-Length": "x"})  # the gate's own answer
        assert refused.status_code == 400 and refused.headers["connection"] == "close"
    finally:
        drain.draining = False
    assert client.get("/readyz").status_code == 200
    assert "connection" not in client.post("/classify", json={"images": images[:1].tolist()}).headers


class FakeServer:
    """What Drain needs of uvicorn's Server: its flags (the time each was set is kept), and its SIGTERM handler as
    a bound method."""

    def __init__(self) -> None:
        self.set_at: dict[str, float] = {}

    def __setattr__(self, name: str, value: object) -> None:
        if name in ("should_exit", "force_exit") and value:
            self.set_at[name] = time.monotonic()
        super().__setattr__(name, value)

    should_exit = force_exit = False

    def handle_exit(self, signum: int, frame: object) -> None:
        self.should_exit = True


@contextmanager
def sigterm_handled_by(server: FakeServer) -> Iterator[None]:
    previous = signal.signal(signal.SIGTERM, server.handle_exit)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


async def until(condition, bound: float = 30.0) -> None:
    """Wait for condition (an event, not a clock: the bound only stops a test that would hang)."""
    started = time.monotonic()
    while not condition():
        assert time.monotonic() - started < bound, "waited past the bound"
        await asyncio.sleep(0.005)


def test_sigterm_starts_the_window_then_stops_then_forces():
    """Not ready at once; uvicorn's own shutdown no sooner than the window; the force no sooner than the timeout
    after it (timers never fire early, so these hold on any machine, however slow or busy)."""
    server = FakeServer()
    seen: dict[str, object] = {}

    async def scenario() -> None:
        drain = Drain(seconds=0.3, timeout=0.2)
        assert drain.install()
        seen["sent"] = time.monotonic()
        os.kill(os.getpid(), signal.SIGTERM)
        await until(lambda: drain.draining)
        seen["stopped when draining"] = server.should_exit
        await until(lambda: server.force_exit)

    with sigterm_handled_by(server):
        asyncio.run(scenario())
    assert seen["stopped when draining"] is False
    assert server.set_at["should_exit"] - seen["sent"] >= 0.3
    assert server.set_at["force_exit"] - server.set_at["should_exit"] >= 0.2


def test_a_second_sigterm_skips_the_window():
    server = FakeServer()

    async def scenario() -> None:
        drain = Drain(seconds=3600, timeout=3600)
        assert drain.install()
        os.kill(os.getpid(), signal.SIGTERM)
        await until(lambda: drain.draining)
        assert not server.should_exit
        os.kill(os.getpid(), signal.SIGTERM)
        await until(lambda: server.should_exit)  # an hour's window, skipped
        assert not server.force_exit

    with sigterm_handled_by(server):
        asyncio.run(scenario())


def test_without_uvicorns_handler_the_drain_is_not_installed():
    assert not Drain(5, 10).install()  # SIGTERM's handler here is not a server's
    result: list[bool] = []
    worker = threading.Thread(target=lambda: result.append(Drain(5, 10).install()))
    worker.start()
    worker.join()
    assert result == [False]  # only the main thread may set signal handlers


async def hello(scope, receive, send) -> None:
    if scope["type"] != "http":
        return
    while (await receive()).get("more_body"):
        pass
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
    await send({"type": "http.response.body", "body": b"ok"})


READ_TIMEOUT_S = 0.5


@pytest.fixture
def guarded_server(request) -> Iterator[tuple[int, type]]:
    """A real uvicorn in a thread, with the guarded protocol: read deadline READ_TIMEOUT_S (or the test's
    `read_timeout` parameter), at most 3 connections."""
    read_timeout = getattr(request, "param", READ_TIMEOUT_S)
    protocol = type("Guarded", (GuardedHTTPProtocol,), {"read_timeout": read_timeout, "max_connections": 3})
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(hello, http=protocol, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    started = time.monotonic()
    while not server.started:  # an event; the bound only stops a test that would hang
        assert time.monotonic() - started < 60
        time.sleep(0.01)
    yield sock.getsockname()[1], protocol
    server.should_exit = True
    thread.join(5)


def read_until_closed(conn: socket.socket, timeout: float) -> tuple[bytes, float]:
    """Everything the server sends until it closes the connection, and when it closed it."""
    conn.settimeout(timeout)
    started, data = time.monotonic(), b""
    while chunk := conn.recv(4096):
        data += chunk
    return data, time.monotonic() - started


def test_a_request_that_does_not_arrive_in_time_gets_408_and_is_closed(guarded_server):
    port, _ = guarded_server
    sent = time.monotonic()  # before the connects: each deadline starts when the server accepts its connection
    with socket.create_connection(("127.0.0.1", port)) as half_header, \
            socket.create_connection(("127.0.0.1", port)) as half_body:
        half_header.sendall(b"POST /classify HTTP/1.1\r\nHost: x\r\n")
        half_body.sendall(b"POST /classify HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n0123456789")
        for conn in (half_header, half_body):
            data, _ = read_until_closed(conn, 60)
            assert data.startswith(b"HTTP/1.1 408 ") and b"did not arrive in time" in data
            assert time.monotonic() - sent >= READ_TIMEOUT_S - TIMER_SLACK_S  # not before the deadline


def test_a_whole_request_and_the_next_one_on_the_same_connection_are_answered(guarded_server):
    port, _ = guarded_server
    with socket.create_connection(("127.0.0.1", port)) as conn:
        for _ in range(2):
            conn.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            conn.settimeout(2)
            answer = b""
            while not answer.endswith(b"ok"):
                answer += conn.recv(4096)
            assert answer.startswith(b"HTTP/1.1 200 ")
            time.sleep(READ_TIMEOUT_S * 0.6)  # the deadline starts again after each answer: 1.2 deadlines in all
        data, _ = read_until_closed(conn, 60)  # idle: closed by the deadline, with nothing sent
        assert data == b""


@pytest.mark.parametrize("guarded_server", [3600.0], indirect=True)  # no deadline closes the three held
def test_connections_over_the_cap_are_closed_at_once(guarded_server):
    port, _ = guarded_server
    held = [socket.create_connection(("127.0.0.1", port)) for _ in range(3)]
    try:
        for conn in held:  # each accepted and answered: the server holds all three
            conn.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            conn.settimeout(60)
            answer = b""
            while not answer.endswith(b"ok"):
                answer += conn.recv(4096)
        with socket.create_connection(("127.0.0.1", port)) as extra:
            data, _ = read_until_closed(extra, 60)  # closed at once, not after an hour's deadline
            assert data == b""
        held[0].settimeout(0.1)
        with pytest.raises(socket.timeout):  # the first three are still open
            held[0].recv(1)
    finally:
        for conn in held:
            conn.close()
