"""Stopping and restarting through real processes: one `bentoml serve` (its worker's read deadline, a
killed worker's restart, the drain on SIGTERM), then two replicas behind HAProxy restarted under Locust
(`python -m loadtest.replicas --quick`). The same contract in-process: tests/test_lifecycle.py."""

from __future__ import annotations

import http.client
import json
import shutil
import signal
import socket
import time

import psutil
import pytest

from loadtest import replicas
from loadtest.server import running_service, wait_ready
from tests.conftest import REQUIRE_TOOLS, SERVICE_ENV, TIMER_SLACK_S

DRAIN_S = 3.0
READ_TIMEOUT_S = 1.0
BOUND_S = 120  # how long a test waits for an event before it calls the wait a hang: never a measure of speed


def get(url: str, path: str, conn: http.client.HTTPConnection | None = None) -> tuple[int, str | None]:
    host, port = url.removeprefix("http://").split(":")
    conn = conn or http.client.HTTPConnection(host, int(port), timeout=BOUND_S)
    conn.request("GET", path)
    answer = conn.getresponse()
    answer.read()
    return answer.status, answer.getheader("connection")


def read_all(conn: socket.socket) -> bytes:
    conn.settimeout(BOUND_S)
    data = b""
    while chunk := conn.recv(65536):
        data += chunk
    return data


def test_a_worker_restarts_and_sigterm_drains_with_a_request_in_flight(tmp_path, digits):
    images, _, expected = digits
    env = {**SERVICE_ENV, "CAPSNET_WORKERS": "1", "CAPSNET_DRAIN_SECONDS": str(DRAIN_S),
           "CAPSNET_READ_TIMEOUT": str(READ_TIMEOUT_S), "BENTOML_HOME": str(tmp_path / "bentoml")}
    with running_service(env=env, log=tmp_path / "service.log") as service:
        host, port = service.url.removeprefix("http://").split(":")
        # a client that sends half a header is answered 408 and closed, not before the read deadline (which starts when
        # the server accepts the connection: after `started`, whenever the client's connect returns)
        started = time.monotonic()
        with socket.create_connection((host, int(port))) as slow:
            slow.sendall(b"POST /classify HTTP/1.1\r\nHost: x\r\n")
            assert read_all(slow).startswith(b"HTTP/1.1 408 ")
            # (CI measured 0.99990 s for a 1 s deadline: TIMER_SLACK_S)
            assert time.monotonic() - started >= READ_TIMEOUT_S - TIMER_SLACK_S

        # a killed worker is replaced (serving/framework.py's quick_respawn: tests/test_framework.py) and ready again
        manager = psutil.Process(service.pid)
        (worker,) = manager.children()
        started = time.monotonic()
        worker.kill()
        worker.wait()
        wait_ready(service.url, BOUND_S, interval=0.05)
        print(f"worker SIGKILLed: ready again after {time.monotonic() - started:.2f} s")

        # SIGTERM to `bentoml serve` while 256 digits are in flight: they are answered; not ready at once; every
        # answer through the window, on old and new connections, says Connection: close; then it exits 0
        body = images[:256].astype("<f4").tobytes()
        in_flight = socket.create_connection((host, int(port)))
        in_flight.sendall(b"POST /classify HTTP/1.1\r\nHost: x\r\nContent-Type: application/octet-stream\r\n"
                          b"Connection: close\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
        kept_alive = http.client.HTTPConnection(host, int(port), timeout=BOUND_S)
        assert get(service.url, "/livez", kept_alive) == (200, None)
        manager.send_signal(signal.SIGTERM)
        started = time.monotonic()
        while get(service.url, "/readyz")[0] != 503:
            assert time.monotonic() - started < BOUND_S
        assert get(service.url, "/readyz") == (503, "close")
        assert get(service.url, "/livez", kept_alive) == (200, "close")
        head, _, answer = read_all(in_flight).partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200 ") and json.loads(answer)["labels"] == expected[:256].tolist()
        in_flight.close()
        assert manager.wait(timeout=BOUND_S) == 0
        print(f"SIGTERM: exited 0 after {time.monotonic() - started:.2f} s (drain window {DRAIN_S} s)")


@pytest.mark.skipif(shutil.which("haproxy") is None and not REQUIRE_TOOLS, reason="needs Debian's haproxy (apt-get install haproxy)")
def test_a_rolling_restart_behind_haproxy_loses_no_request(tmp_path, served_onnx, capsys):
    code = replicas.main(["--quick", "--model", str(served_onnx), "--out", str(tmp_path)])
    report = json.loads((tmp_path / "report.json").read_text())
    with capsys.disabled():
        print(f"\nrolling restart, quick: {report['requests']} requests, {report['failures']} failed;"
              f" events {[(e['replica'], e['ready_again_after_s']) for e in report['events']]}")
    assert report["requests"] > 100 and report["failures"] == 0, report["failure_kinds"]
    assert [e["replica"] for e in report["events"]] == ["replica1", "replica2"]
    assert all(e["exit_code"] == 0 for e in report["events"])
    assert report["seconds"] >= report["events_finished_at_s"]  # the load went on until both restarts had finished
    assert code == 0
