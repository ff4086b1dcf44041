from __future__ import annotations

from pathlib import Path

import pytest

from mnist import DEFAULT_ROOT, ensure_mnist

ROOT = Path(__file__).resolve().parents[1]
PUBLISHED = ROOT / "models" / "capsnet-mnist.safetensors"


def pytest_collection_modifyitems(config, items):
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


@pytest.fixture(scope="session")
def served_onnx(tmp_path_factory, mnist_root) -> Path:
    """The fp32 ONNX file the service tests use, its int8 and fp16 variants beside it: the published model
    if there is one, else a tiny one."""
    from export.onnx_export import export_and_verify
    from training.train import main

    folder = tmp_path_factory.mktemp("served")
    weights = PUBLISHED
    if not weights.exists():
        main(["--epochs", "1", "--limit", "256", "--test-limit", "200", "--out", str(folder / "run"), "--quiet",
              "--data", str(mnist_root)])
        weights = folder / "run" / "checkpoint.safetensors"
    out = folder / "capsnet.onnx"
    # the published model is checked on all 10,000 test digits, a tiny stand-in on 1,000
    export_and_verify(weights, out, verify_digits=1000, accuracy_digits=None if weights == PUBLISHED else 1000,
                      data_root=mnist_root, variants=("int8", "fp16"))
    return out


@pytest.fixture(scope="session")
def service(served_onnx, tmp_path_factory):
    """A real `bentoml serve` process on a free loopback port, serving served_onnx."""
    from loadtest.server import running_service

    folder = tmp_path_factory.mktemp("service")
    # its own BentoML home: every `bentoml serve` that starts (tests/test_startup.py's among them) empties
    # its home's Prometheus folder, which would leave this service's /metrics empty
    env = {"CAPSNET_MODEL": str(served_onnx), "CAPSNET_DEVICE": "cpu", "BENTOML_HOME": str(folder / "bentoml")}
    with running_service(env=env, log=folder / "service.log") as running:
        yield running


@pytest.fixture(scope="session")
def service_url(service) -> str:
    return service.url
