"""A service that cannot serve stops at start-up, once, with its reason: through `make serve` and `bentoml serve`.
Each bad setting's message is tested in-process (tests/test_settings.py); here, once per way the process stops:
a setting read at import, a model the start-up check cannot open, a device it cannot start."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from loadtest.server import free_port

ROOT = Path(__file__).resolve().parents[1]


def serve(command: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    """Run a serve command that must stop by itself; 90 s is far more than a failing start takes."""
    return subprocess.run(command, cwd=ROOT, env={**os.environ, **env}, capture_output=True, text=True, timeout=90)


def bentoml_serve() -> list[str]:
    return [sys.executable, "-m", "bentoml", "serve", "serving.service:CapsNet", "--host", "127.0.0.1",
            "--port", str(free_port())]


@pytest.mark.skipif(Path("/dev/nvidiactl").exists(), reason="a GPU is present here")
def test_cuda_without_a_working_provider_stops_make_serve_once(served_onnx):
    """CAPSNET_MODEL given to make is the file served (make does not export its own)."""
    run = serve(["make", "serve", f"CAPSNET_MODEL={served_onnx}", f"PORT={free_port()}"], {"CAPSNET_DEVICE": "cuda"})
    assert run.returncode != 0
    out = run.stdout + run.stderr
    assert out.count("capsnet: cannot start: CAPSNET_DEVICE=cuda") == 1, out[-3000:]
    assert "set CAPSNET_DEVICE=cpu" in out and "python -m export" not in out


@pytest.mark.parametrize("env, reason", [
    ({"CAPSNET_MODEL": "nowhere/capsnet.onnx"}, f"{ROOT}/nowhere/capsnet.onnx: no ONNX model here"),
    ({"CAPSNET_WORKERS": "abc"}, "CAPSNET_WORKERS='abc': expected a whole number of 1 or more"),
])
def test_bentoml_serve_exits_1_with_the_reason(served_onnx, env, reason):
    run = serve(bentoml_serve(), {"CAPSNET_MODEL": str(served_onnx), "CAPSNET_DEVICE": "cpu", **env})
    assert run.returncode == 1
    assert (run.stdout + run.stderr).count(f"capsnet: cannot start: {reason}") == 1, run.stderr[-3000:]


def test_a_grpc_port_in_use_stops_the_start_with_the_reason(served_onnx):
    import socket

    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        run = serve(bentoml_serve(), {"CAPSNET_MODEL": str(served_onnx), "CAPSNET_DEVICE": "cpu",
                                      "CAPSNET_GRPC_PORT": str(port)})
    assert run.returncode == 1
    reason = f"capsnet: cannot start: CAPSNET_GRPC_PORT={port} on CAPSNET_GRPC_HOST=127.0.0.1: cannot listen there"
    assert (run.stdout + run.stderr).count(reason) == 1, run.stderr[-3000:]


def test_the_service_settings_batcher_metrics_and_tracing(served_onnx, mnist_root):
    """CAPSNET_BATCHER=bentoml serves the same answers through BentoML's batching; CAPSNET_METRICS=0 takes
    /metrics away; CAPSNET_TRACING=1 keeps BentoML's tracing middleware, and the service still answers."""
    import httpx

    from loadtest.server import running_service
    from mnist import read_split
    from serving.runtime import CapsNetRuntime

    images, _ = read_split("test", mnist_root, 8)
    expected = CapsNetRuntime(served_onnx, device="cpu", variant="int8").predict(images[:, None]).labels.tolist()
    env = {"CAPSNET_MODEL": str(served_onnx), "CAPSNET_DEVICE": "cpu", "CAPSNET_VARIANT": "int8",
           "CAPSNET_BATCHER": "bentoml", "CAPSNET_METRICS": "0", "CAPSNET_TRACING": "1"}
    with running_service(env=env) as service, httpx.Client(base_url=service.url, timeout=60) as client:
        as_json = client.post("/classify", json={"images": images.tolist()})
        raw = client.post("/classify", content=images.astype("<f4").tobytes(),
                          headers={"Content-Type": "application/octet-stream"})
        assert as_json.status_code == raw.status_code == 200
        assert as_json.json()["labels"] == raw.json()["labels"] == expected
        assert as_json.json()["lengths"] == raw.json()["lengths"]
        assert client.post("/metadata", json={}).json()["batcher"] == "bentoml"
        assert client.get("/metrics").status_code == 404
        assert client.get("/readyz").status_code == 200
