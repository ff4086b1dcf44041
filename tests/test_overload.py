"""Overload is answered with 429/503 instead of an unbounded queue, and the service recovers."""

import json
from concurrent.futures import ThreadPoolExecutor

import httpx

from loadtest.server import running_service

MAX_CONCURRENCY = 4


def test_overload_gets_429_or_503_then_recovers(served_onnx):
    env = {"CAPSNET_MODEL": str(served_onnx), "CAPSNET_DEVICE": "cpu",
           "BENTOML_CONFIG_OPTIONS": f"services.capsnet.traffic.max_concurrency={MAX_CONCURRENCY}"}
    body = json.dumps({"images": [[[0.5] * 28] * 28] * 256})  # a full batch: slow enough to pile up
    with running_service(env=env) as service:
        def send(_):
            return httpx.post(service.url + "/classify", content=body, timeout=120,
                              headers={"Content-Type": "application/json"}).status_code

        with ThreadPoolExecutor(32) as pool:
            statuses = list(pool.map(send, range(64)))
        assert set(statuses) <= {200, 429, 503}, statuses
        assert statuses.count(200) >= MAX_CONCURRENCY
        assert statuses.count(429) + statuses.count(503) > 0
        assert httpx.get(service.url + "/readyz").status_code == 200
        assert send(0) == 200
