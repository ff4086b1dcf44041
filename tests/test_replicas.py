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
from tests.conftest import SERVICE_ENV

DRAIN_S = 2.0
READ_TIMEOUT_S = 1.0


def get(url: str, path: str, conn: http.client.HTTPConnection | None = None) -> tuple[int, str | None]:
    host, port = url.removeprefix("http://").split(":")
    conn = conn or http.client.HTTPConnection(host, int(port), timeout=5)
    conn.request("GET", path)
    answer = conn.getresponse()
    answer.read()
    return answer.status, answer.getheader("connection")


def test_a_worker_restarts_quickly_and_sigterm_drains(tmp_path):
    env = {**SERVICE_ENV, "CAPSNET_WORKERS": "1", "CAPSNET_DRAIN_SECONDS": str(DRAIN_S),
           "CAPSNET_READ_TIMEOUT": str(READ_TIMEOUT_S), "BENTOML_HOME": str(tmp_path / "bentoml")}
    with running_service(env=env, log=tmp_path / "service.log") as service:
        host, port = service.url.removeprefix("http://").split(":")
        # a client that sends half a header is answered 408 and closed after the read deadline
        with socket.create_connection((host, int(port))) as slow:
            slow.sendall(b"POST /classify HTTP/1.1\r\nHost: x\r\n")
            slow.settimeout(10)
            started, data = time.monotonic(), b""
            while chunk := slow.recv(4096):
                data += chunk
            assert data.startswith(b"HTTP/1.1 408 ") and time.monotonic() - started < READ_TIMEOUT_S + 1

        # a killed worker is replaced and ready again within a second or two, not BentoML's 10 s
        manager = psutil.Process(service.pid)
        (worker,) = manager.children()
        started = time.monotonic()
        worker.kill()
        worker.wait()
        wait_ready(service.url, 30, interval=0.05)
        restart_s = time.monotonic() - started
        print(f"worker SIGKILLed: ready again after {restart_s:.2f} s")
        assert restart_s < 5

        # SIGTERM to `bentoml serve`: not ready at once, still answering (Connection: close) through the window
        kept_alive = http.client.HTTPConnection(host, int(port), timeout=5)
        assert get(service.url, "/livez", kept_alive) == (200, None)
        manager.send_signal(signal.SIGTERM)
        started = time.monotonic()
        time.sleep(0.3)
        assert get(service.url, "/readyz")[0] == 503
        assert get(service.url, "/livez", kept_alive) == (200, "close")
        while time.monotonic() - started < DRAIN_S - 0.5:
            assert get(service.url, "/livez") == (200, "close")  # new connections too
            time.sleep(0.2)
        assert manager.wait(timeout=DRAIN_S + 10) == 0
        print(f"SIGTERM: exited 0 after {time.monotonic() - started:.2f} s (drain window {DRAIN_S} s)")


@pytest.mark.skipif(shutil.which("haproxy") is None, reason="needs Debian's haproxy (apt-get install haproxy)")
def test_a_rolling_restart_behind_haproxy_loses_no_request(tmp_path, served_onnx, capsys):
    code = replicas.main(["--quick", "--model", str(served_onnx), "--out", str(tmp_path)])
    report = json.loads((tmp_path / "report.json").read_text())
    with capsys.disabled():
        print(f"\nrolling restart, quick: {report['requests']} requests, {report['failures']} failed;"
              f" events {[(e['replica'], e['ready_again_after_s']) for e in report['events']]}")
    assert report["requests"] > 500 and report["failures"] == 0, report["failure_kinds"]
    assert [e["replica"] for e in report["events"]] == ["replica1", "replica2"]
    assert all(e["exit_code"] == 0 for e in report["events"]) and report["events_within_run"]
    assert code == 0
