"""Shared fixtures. The service is tested at two depths:

- in-process (`client`): Starlette's test client against the ASGI app `bentoml serve` runs
  (`CapsNet.to_asgi()`), in milliseconds a request; set CAPSNET_TEST_URL=http://host:port to send the same
  tests to a running service instead (`make test-e2e-http` does, against a real `bentoml serve`);
- end to end (`service`, `service_url`): a real `bentoml serve` process, where the process is the point.

Both serve the published ONNX files in models/ (int8 on the CPU), which are committed.
"""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest

from mnist import DEFAULT_ROOT, ensure_mnist, read_split

ROOT = Path(__file__).resolve().parents[1]
PUBLISHED = ROOT / "models" / "capsnet-mnist.safetensors"
PUBLISHED_ONNX = ROOT / "models" / "capsnet-mnist.onnx"
SERVICE_ENV = {"CAPSNET_MODEL": str(PUBLISHED_ONNX), "CAPSNET_DEVICE": "cpu"}
# CI installs every tool the tests use (Chromium, wrk, HAProxy; .ci/run): there, a test that would be skipped for
# a missing tool runs and fails instead
OWN_CANVAS = 32  # the image size of the tests' own model (own_run)
REQUIRE_TOOLS = bool(os.environ.get("CAPSNET_REQUIRE_TOOLS") or os.environ.get("CI"))
TIMER_SLACK_S = 0.02  # how early an event loop's timer may fire as a test counts time (uvloop: whole ms from a cached clock)


# The modules whose tests start real processes (a service, a container, a browser, Locust, wrk, Node), train or
# export a model, or read all 10,000 test digits: `make test-quick` (-m "not slow") leaves them out.
SLOW_MODULES = {"test_e2e", "test_disconnect", "test_replicas", "test_peers", "test_tritonclient", "test_startup", "test_overload", "test_loadtest", "test_pinned", "test_ui",
                "test_container", "test_runtimes", "test_gpu_script", "test_train", "test_export",
                "test_published", "test_evaluate", "test_bench", "test_sizes", "test_soak"}


def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.module.__name__.rsplit(".", 1)[-1] in SLOW_MODULES:
            item.add_marker(pytest.mark.slow)
    # the container's tests last: its base image (Debian's packages, mostly a download) is built in the background
    # meanwhile, from the start of the session (pytest_collection_finish)
    items.sort(key=lambda item: item.module.__name__.endswith("test_container"))
    try:
        import torch

        cuda = torch.cuda.is_available()
    except ImportError:
        cuda = False
    if not cuda:
        skip = pytest.mark.skip(reason="needs a CUDA GPU")
        for item in items:
            if "gpu" in item.keywords:
                item.add_marker(skip)


BASE_IMAGE_LOG = ROOT / "runs" / "test-base-image.log"
BACKGROUND: dict[str, subprocess.Popen] = {}


def pytest_collection_finish(session):
    """When the container's tests will run, start building its base image now, beside the other tests (the
    container test waits for it: `base_image_built`); the build does nothing when the image exists."""
    if not any(item.module.__name__.endswith("test_container") for item in session.items):
        return
    from tests.test_container import can_build

    if can_build():
        BASE_IMAGE_LOG.parent.mkdir(exist_ok=True)
        BACKGROUND["base image"] = subprocess.Popen(
            ["bash", "-c", ". deploy/container/builder.sh && detect_builder"
                           " && deploy/container/base-image.sh $CONTAINER_BUILDER"],
            cwd=ROOT, stdout=open(BASE_IMAGE_LOG, "w"), stderr=subprocess.STDOUT)


def base_image_built() -> None:
    """Wait for the base image's background build, if one was started; its log when it failed."""
    build = BACKGROUND.get("base image")
    if build is not None:
        assert build.wait(timeout=1500) == 0, BASE_IMAGE_LOG.read_text()[-3000:]


@pytest.fixture(scope="session")
def mnist_root() -> Path:
    ensure_mnist(ROOT / DEFAULT_ROOT)
    return ROOT / DEFAULT_ROOT


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory, mnist_root) -> Path:
    """A 1-epoch CapsNet trained on 256 digits: the checkpoint folder."""
    from training.train import main

    out = tmp_path_factory.mktemp("tiny") / "run"
    main(["--epochs", "1", "--limit", "256", "--test-limit", "200", "--out", str(out), "--quiet",
          "--data", str(mnist_root), "--seed", "3"])
    return out


def make(*args: str) -> str:
    """A make target of the project's Makefile, as a user runs it; its output (AssertionError on failure)."""
    run = subprocess.run(["make", "--no-print-directory", *args], cwd=ROOT, capture_output=True, text=True, timeout=1200)
    assert run.returncode == 0, f"make {' '.join(args)}: {run.stdout[-2000:]}{run.stderr[-2000:]}"
    return run.stdout


@pytest.fixture(scope="session")
def own_run(tmp_path_factory, mnist_root) -> Path:
    """A user's own run, the README's way (`make train RUN=...`): a CapsNet for 32x32 images (MNIST's digits centred
    on a bigger canvas), 1 epoch on 256 digits. Another size than the published model's, so that every later stage
    must take the size from the graph, and the published model cannot answer for it."""
    out = tmp_path_factory.mktemp("own") / "run"
    make("train", f"RUN={out}", f"TRAIN_ARGS=--epochs 1 --limit 256 --test-limit 200 --canvas {OWN_CANVAS} --seed 3 "
                                f"--quiet --data {mnist_root}")
    return out


@pytest.fixture(scope="session")
def exported(own_run, tmp_path_factory, mnist_root) -> Path:
    """`make export` of that run (verification included): the model folder of the tests' own, which test_export
    checks and the container test builds its Bento and image from. Its fp32 file."""
    out = tmp_path_factory.mktemp("export") / "capsnet.onnx"
    printed = make("export", f"RUN={own_run}", f"EXPORTED={out}",
                   f"EXPORT_ARGS=--accuracy-digits 500 --verify-digits 200 --batch-seconds 0.05 --data {mnist_root}")
    assert "test accuracy through ONNX Runtime" in printed
    return out


@pytest.fixture(scope="session")
def served_onnx() -> Path:
    """The published fp32 ONNX file, with its int8, fp16 and decoder files beside it: what `make serve` serves."""
    assert PUBLISHED_ONNX.exists(), f"{PUBLISHED_ONNX} is missing: the published ONNX files are part of the repository"
    return PUBLISHED_ONNX


def service_module(env: dict[str, str]):
    """serving.service imported with exactly these CAPSNET_* settings (it reads them once, at import), and no gRPC
    server unless env asks for one (an in-process service's gRPC is tests/test_grpc.py's own); the environment is
    restored afterwards."""
    saved = dict(os.environ)
    for name in [n for n in os.environ if n.startswith("CAPSNET_") and n != "CAPSNET_MNIST_TGZ"]:
        del os.environ[name]
    os.environ.update({"CAPSNET_GRPC_PORT": "0", **env})
    try:
        if "serving.service" in sys.modules:
            return importlib.reload(sys.modules["serving.service"])
        return importlib.import_module("serving.service")
    finally:
        os.environ.clear()
        os.environ.update(saved)


@pytest.fixture(scope="session")
def service_in_process(served_onnx):
    """serving.service as the tests' process imported it, with the published model on the CPU."""
    return service_module(SERVICE_ENV)


@pytest.fixture(scope="session")
def client(request) -> Iterator:
    """An HTTP client of the service: in-process by default, a running service when CAPSNET_TEST_URL says where."""
    import httpx

    url = os.environ.get("CAPSNET_TEST_URL")
    if url:
        with httpx.Client(base_url=url, timeout=120) as remote:
            yield remote
        return
    from starlette.testclient import TestClient

    app = request.getfixturevalue("service_in_process").CapsNet.to_asgi()
    with TestClient(app) as local:
        yield local


@pytest.fixture(scope="session")
def digits(mnist_root, served_onnx) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """300 test digits (N, 28, 28), their true labels, and the labels in-process ONNX Runtime gives them with the
    variant the service runs on the CPU (int8)."""
    from serving.runtime import CapsNetRuntime

    images, labels = read_split("test", mnist_root, 300)
    expected = CapsNetRuntime(served_onnx, device="cpu", variant="int8").predict(images[:, None]).labels
    return images, labels, expected


@pytest.fixture(scope="session")
def service(served_onnx, tmp_path_factory):
    """A real `bentoml serve` process on a free loopback port, serving the published model."""
    from loadtest.server import running_service

    folder = tmp_path_factory.mktemp("service")
    # its own BentoML home: every `bentoml serve` that starts (tests/test_startup.py's among them) empties
    # its home's Prometheus folder, which would leave this service's /metrics empty
    env = {**SERVICE_ENV, "BENTOML_HOME": str(folder / "bentoml")}
    with running_service(env=env, log=folder / "service.log") as running:
        yield running


@pytest.fixture(scope="session")
def service_url(service) -> str:
    return service.url
