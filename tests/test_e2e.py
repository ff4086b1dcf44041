"""A real `bentoml serve` process, where the process is the point: Prometheus metrics, a plain client that
sends its whole body before reading, memory round after round, and BentoML's own HTTP clients (the
README's curl lines: tests/test_docs.py). The HTTP contract itself is tested in-process (tests/test_http.py, tests/test_hostile.py)."""

from __future__ import annotations

import asyncio
import json
import urllib.error
import urllib.request

import bentoml
import httpx
import numpy as np
import psutil
import pytest
import tritonclient.grpc

from mnist import read_split
from tests.conftest import ROOT
from tests.test_hostile import CASES, JSON, OCTETS


def test_metrics_count_every_kind_of_request(service):
    """BentoML's request counter sees what our route table answers (/classify as JSON and raw, uploads, v2) as
    well as what BentoML's own API answers (/reconstruct), and the batcher's metrics count each of them and a
    request over gRPC."""
    image = np.zeros((1, 28, 28), np.float32)
    requests = {
        "/classify": [{"json": {"images": image.tolist()}},
                      {"content": image.tobytes(), "headers": OCTETS}],
        "/classify_image": [{"files": {"image": ("d.png", (ROOT / "docs" / "examples" / "digit.png").read_bytes())}}],
        "/v2/models/capsnet/infer": [{"json": {"inputs": [{"name": "image", "datatype": "FP32", "shape": [1, 1, 28, 28],
                                                           "data": image.ravel().tolist()}]}}],
        "/reconstruct": [{"json": {"images": image.tolist()}}],
    }

    def served(text: str, endpoint: str) -> float:
        return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                   if line.startswith("bentoml_service_request_total{") and f'endpoint="{endpoint}"' in line)

    service_url = service.url
    before = httpx.get(service_url + "/metrics").text
    for endpoint, calls in requests.items():
        for kwargs in calls:
            assert httpx.post(service_url + endpoint, timeout=60, **kwargs).status_code == 200, endpoint
    with tritonclient.grpc.InferenceServerClient(service.grpc) as grpc_client:  # and one over gRPC
        tensor = tritonclient.grpc.InferInput("image", [1, 1, 28, 28], "FP32")
        tensor.set_data_from_numpy(image[None])
        grpc_client.infer("capsnet", [tensor], outputs=[tritonclient.grpc.InferRequestedOutput("lengths")])
    metrics = httpx.get(service_url + "/metrics")
    assert metrics.status_code == 200 and "# TYPE" in metrics.text
    for endpoint, calls in requests.items():
        assert served(metrics.text, endpoint) == served(before, endpoint) + len(calls), endpoint

    # the batcher's own: each request it runs (one image each: /classify twice, the upload, /reconstruct, and the
    # gRPC one, which asks for lengths only; v2 over HTTP asked for every output, which its own session runs)
    # waited once and ran in a batch of its own or merged with another; every batch ran once
    def grew(name: str) -> float:
        def value(text: str) -> float:
            return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name + " "))
        return value(metrics.text) - value(before)

    sent = sum(len(calls) for endpoint, calls in requests.items() if not endpoint.startswith("/v2")) + 1
    assert grew("capsnet_batch_queue_seconds_count") == sent == grew("capsnet_batch_requests_sum")
    assert grew("capsnet_batch_images_sum") == sent
    batches = grew("capsnet_batch_run_seconds_count")
    assert 1 <= batches <= sent and grew("capsnet_batch_images_count") == batches == grew("capsnet_batch_requests_count")
    assert 0 < grew("capsnet_batch_run_seconds_sum") < 5 * batches and grew("capsnet_batch_queue_seconds_sum") >= 0


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
def test_a_plain_client_that_sends_the_whole_body_before_reading_gets_the_413(service_url, framing):
    """urllib writes all 19 MB before it reads the answer: the service reads and drops the rest of an
    over-limit body instead of closing on a client that is still sending (which it sees as a reset)."""
    body = b'{"images": [' + b" " * (19 * 1024 * 1024) + b"]}"
    data = body if framing == "content-length" else (body[i:i + 2**20] for i in range(0, len(body), 2**20))
    headers = JSON if framing == "content-length" else {**JSON, "Transfer-Encoding": "chunked"}
    with pytest.raises(urllib.error.HTTPError) as answer:
        urllib.request.urlopen(urllib.request.Request(service_url + "/classify", data=data, headers=headers),
                               timeout=60)
    assert answer.value.code == 413
    assert json.loads(answer.value.read()) == {"error": "request body over 16,777,216 bytes"}


def rss_mb(pid: int) -> float:
    process = psutil.Process(pid)
    return sum(p.memory_info().rss for p in [process, *process.children(recursive=True)]) / 2**20


def test_memory_does_not_grow_round_after_round_of_hostile_requests(service):
    def one_round() -> None:
        for _, route, kwargs, status, _ in CASES:
            assert httpx.post(service.url + route, timeout=30, **kwargs).status_code == status

    one_round()  # warm: allocator pools, caches
    before = rss_mb(service.pid)
    for _ in range(3):
        one_round()
    after = rss_mb(service.pid)
    assert after - before < 64, f"RSS grew from {before:.0f} MB to {after:.0f} MB over 3 rounds"
    assert httpx.get(service.url + "/readyz", timeout=30).status_code == 200


def test_memory_per_accepted_large_request_is_bounded(service, mnist_root):
    """20 full requests (256 digits as raw float32, 0.8 MB each, 16 MB in all): the service may keep less than
    128 kB per request; holding on to each body or its array would keep 0.8 to 1.6 MB each. (JSON bodies go
    through the same gate; measuring them would need ~40 warm-up requests first, while the JSON path's pools
    grow, about 20 s on 2 cores.)"""
    images = read_split("test", mnist_root, 256)[0]
    octets = {"content": images.astype("<f4").tobytes(), "headers": OCTETS}
    with httpx.Client(base_url=service.url, timeout=60) as client:
        def send() -> None:
            r = client.post("/classify", **octets)
            assert r.status_code == 200 and len(r.json()["labels"]) == 256

        for _ in range(5):  # warm: the batch-256 buffers
            send()
        before = rss_mb(service.pid)
        for _ in range(20):
            send()
        grown = rss_mb(service.pid) - before
    assert grown < 20 * 0.125, f"RSS grew {grown:.1f} MB over 20 requests (16 MB sent)"


@pytest.fixture(scope="module")
def eight(mnist_root):
    return read_split("test", mnist_root, 8)


def test_bentoml_sync_client_drives_every_endpoint(service_url, eight):
    images, labels = eight
    with bentoml.SyncHTTPClient(service_url) as client:
        as_array = client.classify(images=images)  # a numpy array: the schema says it is a tensor
        as_lists = client.classify(images=images.tolist())
        assert as_array["labels"] == as_lists["labels"] == labels.tolist()
        assert np.abs(np.array(as_array["lengths"]) - np.array(as_lists["lengths"])).max() < 1e-6
        rebuilt = client.reconstruct(images=images[:2, None])  # N x 1 x 28 x 28 works too
        assert rebuilt["labels"] == labels[:2].tolist() and np.array(rebuilt["reconstructions"]).shape == (2, 28, 28)
        assert client.classify_image(image=ROOT / "docs" / "examples" / "digit.png")["label"] == 1
        assert client.metadata()["model_file"] == "capsnet-mnist-int8.onnx"
        explained = client.explain(images=images[:2])
        assert explained["labels"] == labels[:2].tolist() and np.array(explained["routing_maps"]).shape == (2, 6, 6)
        with pytest.raises(bentoml.exceptions.BentoMLException, match=r"pixel values must lie in \[0, 1\]"):
            client.classify(images=np.full((1, 28, 28), 1.5, dtype=np.float32))


def test_bentoml_async_client_classifies_a_numpy_array(service_url, eight):
    images, labels = eight

    async def call() -> dict:
        async with bentoml.AsyncHTTPClient(service_url) as client:
            return await client.classify(images=images)

    assert asyncio.run(call())["labels"] == labels.tolist()
