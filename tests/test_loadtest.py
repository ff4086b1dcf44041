"""Real headless Locust runs against a real service, bounded in users and seconds."""

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np

from loadtest.run import derived_slo_ms
from loadtest.server import free_port
from mnist import read_split


def run_loadtest(served_onnx, out, mnist_root, *extra):
    return subprocess.run([sys.executable, "-m", "loadtest", "--digits", "64", "--in-process-seconds", "0.3",
                           "--model", str(served_onnx),
                           "--out", str(out), "--data", str(mnist_root), *extra],
                          capture_output=True, text=True, timeout=400)


def test_short_sweep_has_no_failures_and_reports_every_step(served_onnx, tmp_path, mnist_root):
    out = tmp_path / "lt"
    run = run_loadtest(served_onnx, out, mnist_root, "--users", "2", "8", "--duration", "3",
                       "--slo-users", "8", "--slo-p99-ms", "5000", "--images-per-request", "4")
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert [s["users"] for s in summary["steps"]] == [2, 8]
    for step in summary["steps"]:
        assert step["failures"] == 0 and step["requests"] > 20
        assert step["p50_ms"] <= step["p90_ms"] <= step["p95_ms"] <= step["p99_ms"]
        # the service's side, from its /metrics over the same step: every request Locust counted reached the
        # batcher (and more: Locust's stats leave out what its users finish after their last write, as they stop),
        # in batches of 4 images or more
        server = step["server"]
        assert step["requests"] <= server["requests"]
        assert 4 <= server["batch_images"] <= 4 * step["users"] and server["batches"] <= server["requests"]
        assert server["compute_ms"] > 0 and server["queue_ms"] >= 0
        assert step["images_per_s"] == round(step["requests_per_s"] * 4, 1)
        assert 0 < step["fraction_of_in_process"] == round(step["images_per_s"]
                                                           / summary["in_process_best_images_per_s"], 3)
        assert (out / f"report-u{step['users']}.html").stat().st_size > 1000
        assert step["locust_processes"] == 1 and 0 < step["locust_cpu_cores"] < 1.5  # one process: at most a core
    assert summary["slo"]["checked"] and summary["slo"]["passed"] and summary["slo"]["failures"] == 0
    assert summary["variant"] == "int8" and summary["body"] == "octets" and summary["images_per_request"] == 4
    assert summary["in_process_best_images_per_s"] == max(summary["in_process_images_per_s"].values())
    assert (out / "loadtest.png").stat().st_size > 5000
    assert "of in-process" in run.stdout


def test_the_derived_slo_is_the_queues_time_at_the_models_own_speed():
    """16 users of 8 images at 500 images/s in-process: 128 images, 256 ms; twice that, plus 100 ms."""
    assert derived_slo_ms(16, 8, 500.0) == 2 * 256 + 100
    assert derived_slo_ms(16, 8, 1000.0) < derived_slo_ms(16, 8, 500.0)  # a faster machine, a tighter bound


def test_failed_requests_and_a_missed_slo_fail_the_command(served_onnx, tmp_path, mnist_root, monkeypatch):
    """A service that may hold one request at a time refuses most of 8 users' requests (429), and no p99 meets
    0.001 ms: exit 1, both said. Also the JSON body, one digit per request, the fp32 model, Locust in two processes."""
    monkeypatch.setenv("BENTOML_CONFIG_OPTIONS", "services.capsnet.traffic.max_concurrency=1")
    out = tmp_path / "lt"
    run = run_loadtest(served_onnx, out, mnist_root, "--users", "8", "--duration", "3", "--slo-users", "8",
                       "--slo-p99-ms", "0.001", "--body", "json", "--images-per-request", "1", "--variant", "fp32",
                       "--locust-processes", "2")
    assert run.returncode == 1
    assert re.search(r"FAILED: \d+ failed requests; p99 \d+ ms at 8 users > 0 ms", run.stderr), run.stderr[-2000:]
    summary = json.loads((out / "summary.json").read_text())
    assert not summary["slo"]["passed"] and summary["variant"] == "fp32" and summary["body"] == "json"
    [step] = summary["steps"]
    assert 0 < step["failures"] == summary["slo"]["failures"] and step["requests"] > step["failures"]
    assert step["locust_processes"] == 2 and step["locust_cpu_cores"] > 0


ROOT = Path(__file__).resolve().parents[1]


def locust(*args, env=None, **kwargs):
    """Locust's own command, run from the repository root as its users run it."""
    return subprocess.run([str(Path(sys.executable).with_name("locust")), "-f", "loadtest/locustfile.py", *args],
                          cwd=ROOT, env={**os.environ, **(env or {})}, capture_output=True, text=True, **kwargs)


def test_the_locustfile_runs_on_its_own_headless(service_url):
    """No digits file: MNIST through the torch-free reader, answers checked for form, agreement reported."""
    run = locust("--host", service_url, "--headless", "-u", "2", "-r", "2", "-t", "4s", "--only-summary",
                 "--images-per-request", "4", "--body", "json", timeout=120)
    assert run.returncode == 0, run.stderr[-3000:]
    agree = re.search(r"labels agreeing with MNIST's own: (\d+)/(\d+)", run.stderr)
    assert agree and int(agree.group(2)) > 0 and int(agree.group(1)) >= 0.98 * int(agree.group(2))


def test_a_wrong_label_fails_the_locust_run(service_url, tmp_path, mnist_root):
    """A digits file whose expected labels are all off by one: every answer is a failure, Locust exits 1."""
    images, labels = read_split("test", mnist_root, 32)
    np.savez(tmp_path / "wrong.npz", images=images, expected=(labels + 1) % 10)
    run = locust("--host", service_url, "--headless", "-u", "1", "-r", "1", "-t", "3s", "--only-summary",
                 env={"CAPSNET_DIGITS": str(tmp_path / "wrong.npz")}, timeout=120)
    assert run.returncode == 1
    assert "expected labels" in run.stdout + run.stderr


def test_the_locustfile_runs_from_the_web_ui(service_url):
    """Locust's web UI, driven through its own HTTP endpoints: start a swarm, read the stats, stop."""
    port = free_port()
    proc = subprocess.Popen([str(Path(sys.executable).with_name("locust")), "-f", "loadtest/locustfile.py",
                             "--host", service_url, "--web-host", "127.0.0.1", "--web-port", str(port)],
                            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    ui = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 60
        while time.time() < deadline:
            try:
                if httpx.get(ui + "/", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.5)
        started = httpx.post(ui + "/swarm", data={"user_count": 2, "spawn_rate": 2, "host": service_url}, timeout=10)
        assert started.status_code == 200 and started.json()["success"], started.text
        started_at = time.monotonic()
        while True:  # until ten requests have been answered (the bound only stops a hang)
            stats = httpx.get(ui + "/stats/requests", timeout=10).json()
            total = next(s for s in stats["stats"] if s["name"] == "Aggregated")
            if total["num_requests"] > 10 or time.monotonic() - started_at > 120:
                break
            time.sleep(0.5)
        assert total["num_requests"] > 10 and total["num_failures"] == 0, total
        httpx.get(ui + "/stop", timeout=10)
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_free_ports_are_never_handed_out_twice(monkeypatch):
    """A service's HTTP and gRPC ports come from two calls in a row, and the kernel may give the same free port to
    both (it once did: the service could not bind its gRPC port). Here a kernel that does so, every time."""
    from loadtest import server

    given = iter([41001, 41001, 41001, 41002])

    class Socket:
        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def bind(self, address):
            self.port = next(given)

        def getsockname(self):
            return ("127.0.0.1", self.port)

    monkeypatch.setattr(server.socket, "socket", Socket)
    monkeypatch.setattr(server, "_GIVEN", set())
    assert [server.free_port(), server.free_port()] == [41001, 41002]
