"""Clients that leave before their answer, against a real `bentoml serve` (the process is the point: real sockets
closed by their clients): 1,000 requests whose clients disconnect while the model is busy with others are dropped
before they run, and leave nothing behind in the worker (connections, descriptors, threads, memory)."""

from __future__ import annotations

import socket
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import psutil

from loadtest.prometheus import scrape
from loadtest.server import running_service
from tests.conftest import SERVICE_ENV

ROUNDS, LEAVING = 20, 50  # 1,000 clients that leave, 50 at a time
DIGITS = 8  # per leaving request
BLOCKERS, BLOCKER_DIGITS = 4, 128  # per round: requests that keep the model busy meanwhile (each runs alone)
BOUND_S = 120  # how long to wait for an event before calling it a hang


def worker_state(worker: psutil.Process) -> dict[str, float]:
    return {"connections": len(worker.net_connections("tcp")), "fds": worker.num_fds(),
            "threads": worker.num_threads(), "rss_mb": worker.memory_info().rss / 2**20}


def wait_until(condition, what: str) -> None:
    started = time.monotonic()
    while not condition():
        assert time.monotonic() - started < BOUND_S, f"waited {BOUND_S} s for {what}"
        time.sleep(0.05)


def send(host: str, port: int, body: bytes, stay: bool) -> None:
    """A whole /classify request on a connection of its own; then its answer read (stay), or the connection closed
    without reading it."""
    with socket.create_connection((host, port)) as conn:
        conn.sendall(b"POST /classify HTTP/1.1\r\nHost: x\r\nContent-Type: application/octet-stream\r\n"
                     + f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode() + body)
        if stay:
            conn.settimeout(BOUND_S)
            answer = b""
            while chunk := conn.recv(65536):
                answer += chunk
            assert answer.startswith(b"HTTP/1.1 200 "), answer[:200]


def test_a_thousand_clients_that_leave_are_dropped_and_leave_nothing_behind(digits, tmp_path):
    images = digits[0]
    env = {**SERVICE_ENV, "CAPSNET_WORKERS": "1"}
    log = tmp_path / "service.log"
    with running_service(env=env, log=log) as service:
        host, port = service.url.removeprefix("http://").split(":")
        (worker,) = psutil.Process(service.pid).children()
        blocker = np.resize(images, (BLOCKER_DIGITS, 28, 28)).astype("<f4").tobytes()
        leaving = images[:DIGITS].astype("<f4").tobytes()

        def busy(client: httpx.Client) -> int:
            return client.post("/classify", content=blocker, headers={"Content-Type": "application/octet-stream"}
                               ).status_code

        def settled() -> dict[str, float]:
            """The worker's state once only its listening sockets are left (every client gone)."""
            wait_until(lambda: not [c for c in worker.net_connections("tcp") if c.status != psutil.CONN_LISTEN],
                       "the worker's client connections to close")
            return worker_state(worker)

        def rounds(count: int, stay: bool) -> None:
            with httpx.Client(base_url=service.url, timeout=BOUND_S) as client, \
                    ThreadPoolExecutor(BLOCKERS + LEAVING) as pool:
                for _ in range(count):
                    blockers = [pool.submit(busy, client) for _ in range(BLOCKERS)]
                    list(pool.map(lambda _: send(host, int(port), leaving, stay), range(LEAVING)))
                    assert [b.result() for b in blockers] == [200] * BLOCKERS

        rounds(1, stay=True)  # the same traffic with clients that stay, first: the worker's memory at its working size
        before, ran_before = settled(), scrape(service.url)
        rounds(ROUNDS, stay=False)
        ran = scrape(service.url)["capsnet_batch_images_sum"] - ran_before["capsnet_batch_images_sum"]
        leaving_ran = ran - ROUNDS * BLOCKERS * BLOCKER_DIGITS  # what the model ran beyond the blockers' images
        after = settled()
        print(f"\n{ROUNDS * LEAVING} clients left: the model ran {leaving_ran:.0f} of their {ROUNDS * LEAVING * DIGITS}"
              f" images; worker before {before}, after {after}")
        assert leaving_ran <= 0.1 * ROUNDS * LEAVING * DIGITS  # at least 90% dropped before running
        assert after["fds"] <= before["fds"] + 2 and after["threads"] <= before["threads"]
        assert after["rss_mb"] <= 1.05 * before["rss_mb"]
    # a cancelled request is no error, and none is still running when the service stops (BentoML's layers above the
    # route wait for its first message: serving/app.py answers it 499, which uvicorn drops for a gone client)
    text = log.read_text()
    assert "Traceback" not in text and "ERROR" not in text and "still running" not in text
