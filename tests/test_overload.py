"""Overload is answered with 429 at once instead of an unbounded queue, and the service recovers."""

import json
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np

from loadtest.server import running_service

SMALL_LIMIT = 4


def test_a_lowered_limit_gets_429_then_recovers(served_onnx):
    env = {"CAPSNET_MODEL": str(served_onnx), "CAPSNET_DEVICE": "cpu",
           "BENTOML_CONFIG_OPTIONS": f"services.capsnet.traffic.max_concurrency={SMALL_LIMIT}"}
    body = json.dumps({"images": [[[0.5] * 28] * 28] * 256})  # a full batch: slow enough to pile up
    with running_service(env=env) as service:
        def send(_):
            return httpx.post(service.url + "/classify", content=body, timeout=120,
                              headers={"Content-Type": "application/json"}).status_code

        with ThreadPoolExecutor(32) as pool:
            statuses = list(pool.map(send, range(64)))
        assert set(statuses) <= {200, 429}, statuses
        assert statuses.count(200) >= SMALL_LIMIT and statuses.count(429) > 0
        assert httpx.get(service.url + "/readyz").status_code == 200
        assert send(0) == 200


def test_the_shipped_limits_refuse_at_once_and_never_503(service):
    """With the shipped max_concurrency (128), 200 requests of 32 digits at once: some are refused with 429,
    each of them before the last accepted one is answered (refused at once, not queued), and none gets a 503
    (the batcher's queue never fills over HTTP)."""
    body = np.full((32, 28, 28), 0.5, dtype="<f4").tobytes()
    # the session's service (tests/conftest.py), as shipped
    limits = httpx.Limits(max_connections=200, max_keepalive_connections=200)
    with httpx.Client(base_url=service.url, timeout=180, limits=limits) as client:
        def send(_):
            started = time.perf_counter()
            r = client.post("/classify", content=body, headers={"Content-Type": "application/octet-stream"})
            return r.status_code, time.perf_counter() - started

        with ThreadPoolExecutor(200) as pool:
            results = list(pool.map(send, range(200)))
    statuses = [s for s, _ in results]
    refused = [seconds for status, seconds in results if status == 429]
    slowest_accepted = max(seconds for status, seconds in results if status == 200)
    assert set(statuses) <= {200, 429}, statuses
    assert refused and statuses.count(200) >= 64, statuses
    assert max(refused) < slowest_accepted, (max(refused), slowest_accepted)
