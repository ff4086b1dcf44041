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
    """What Drain needs of uvicorn's Server: its flags, and its SIGTERM handler as a bound method."""

    def __init__(self) -> None:
        self.should_exit = self.force_exit = False

    def handle_exit(self, signum: int, frame: object) -> None:
        self.should_exit = True


@contextmanager
def sigterm_handled_by(server: FakeServer) -> Iterator[None]:
    previous = signal.signal(signal.SIGTERM, server.handle_exit)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_sigterm_starts_the_window_then_stops_then_forces():
    server = FakeServer()
    seen: dict[str, float] = {}

    async def scenario() -> None:
        drain = Drain(seconds=0.2, timeout=0.2)
        assert drain.install()
        started = time.monotonic()
        os.kill(os.getpid(), signal.SIGTERM)
        while not server.force_exit and time.monotonic() - started < 3:
            if drain.draining and "draining" not in seen:
                seen["draining"] = time.monotonic() - started
            if server.should_exit and "stop" not in seen:
                seen["stop"] = time.monotonic() - started
            await asyncio.sleep(0.005)
        seen["force"] = time.monotonic() - started

    with sigterm_handled_by(server):
        asyncio.run(scenario())
    assert seen["draining"] < 0.05  # not ready at once
    assert 0.2 <= seen["stop"] < 0.3  # answering through the window, then uvicorn's own shutdown
    assert 0.4 <= seen["force"] < 0.5  # and at most `timeout` more for what still runs


def test_a_second_sigterm_skips_the_window():
    server = FakeServer()

    async def scenario() -> float:
        drain = Drain(seconds=30, timeout=30)
        assert drain.install()
        started = time.monotonic()
        os.kill(os.getpid(), signal.SIGTERM)
        await asyncio.sleep(0.02)
        assert drain.draining and not server.should_exit
        os.kill(os.getpid(), signal.SIGTERM)
        while not server.should_exit and time.monotonic() - started < 3:
            await asyncio.sleep(0.005)
        return time.monotonic() - started

    with sigterm_handled_by(server):
        assert asyncio.run(scenario()) < 0.2


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


@pytest.fixture
def guarded_server() -> Iterator[tuple[int, type]]:
    """A real uvicorn in a thread, with the guarded protocol: read deadline 0.3 s, at most 3 connections."""
    protocol = type("Guarded", (GuardedHTTPProtocol,), {"read_timeout": 0.3, "max_connections": 3})
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(hello, http=protocol, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    while not server.started:
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
    with socket.create_connection(("127.0.0.1", port)) as half_header, \
            socket.create_connection(("127.0.0.1", port)) as half_body:
        half_header.sendall(b"POST /classify HTTP/1.1\r\nHost: x\r\n")
        half_body.sendall(b"POST /classify HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n0123456789")
        for conn in (half_header, half_body):
            data, closed_after = read_until_closed(conn, 3)
            assert data.startswith(b"HTTP/1.1 408 ") and b"did not arrive in time" in data
            assert closed_after < 0.6


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
            time.sleep(0.2)  # the deadline starts again after each answer: 0.4 s in all is fine
        _, closed_after = read_until_closed(conn, 3)  # idle: closed by the deadline (or uvicorn's keep-alive)
        assert closed_after < 0.6


def test_connections_over_the_cap_are_closed_at_once(guarded_server):
    port, _ = guarded_server
    held = [socket.create_connection(("127.0.0.1", port)) for _ in range(3)]
    try:
        time.sleep(0.05)
        with socket.create_connection(("127.0.0.1", port)) as extra:
            data, closed_after = read_until_closed(extra, 2)
            assert data == b"" and closed_after < 0.1
        held[0].settimeout(0.1)
        with pytest.raises(socket.timeout):  # the first three are still open
            held[0].recv(1)
    finally:
        for conn in held:
            conn.close()
