import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from starlette.applications import Starlette
from starlette.testclient import TestClient

from mnist import read_split
from serving.app import Bound, Front
from serving.batching import BATCHERS, MicroBatcher
from serving.errors import Overloaded
from serving.lifecycle import Drain
from serving.metrics import BatcherMetrics
from serving.routes import Routes
from serving.runtime import CapsNetRuntime
from serving.settings import Settings
from serving.v2 import OpenInference


@pytest.fixture(scope="module")
def runtime(served_onnx):
    return CapsNetRuntime(served_onnx, device="cpu")


def test_concurrent_requests_share_runs_and_each_gets_its_rows(runtime, mnist_root):
    x = read_split("test", mnist_root, 120)[0][:, None]
    direct = runtime.predict(x)
    batcher = MicroBatcher(runtime, max_batch=64)
    requests = [x[i:i + 3] for i in range(0, 120, 3)]  # 40 requests of 3 images
    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(batcher.predict, requests))
    assert np.array_equal(np.concatenate([a.labels for a in answers]), direct.labels)
    assert np.allclose(np.concatenate([a.lengths for a in answers]), direct.lengths, atol=1e-5)
    assert np.allclose(np.concatenate([a.reconstructions for a in answers]), direct.reconstructions, atol=1e-5)
    assert sum(batcher.batch_sizes) == 120
    assert max(batcher.batch_sizes) > 3 and max(batcher.batch_sizes) <= 64  # merged, never over the cap
    assert len(batcher.batch_sizes) < 40


class Observed(list):
    """A histogram that keeps what it observed."""
    observe = list.append


def test_the_batcher_metrics_see_each_request_and_batch(runtime, mnist_root):
    """Every request's wait is observed once, every batch's run, request count and image count once."""
    x = read_split("test", mnist_root, 60)[0][:, None]
    metrics = BatcherMetrics(Observed(), Observed(), Observed(), Observed())
    batcher = MicroBatcher(runtime, max_batch=64, metrics=metrics)
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(batcher.predict, [x[i:i + 3] for i in range(0, 60, 3)]))  # 20 requests of 3 images
    assert len(metrics.queue_seconds) == 20 == sum(metrics.batch_requests)
    assert metrics.batch_images == batcher.batch_sizes and sum(metrics.batch_images) == 60
    assert len(metrics.run_seconds) == len(batcher.batch_sizes) and min(metrics.run_seconds) > 0
    assert min(metrics.queue_seconds) >= 0
    assert max(metrics.batch_requests) > 1  # merged: eight clients at once


@pytest.mark.parametrize("kind", sorted(BATCHERS))
def test_awaited_requests_share_runs_and_each_gets_its_rows(runtime, mnist_root, kind):
    """What the service does: the requests await the batcher on one event loop (ours, or BentoML's dispatcher)."""
    x = read_split("test", mnist_root, 120)[0][:, None]
    direct = runtime.predict(x)
    batcher = BATCHERS[kind](runtime, 16)

    async def send_all():
        return await asyncio.gather(*(batcher.predict_async(x[i:i + 3]) for i in range(0, 120, 3)))

    answers = asyncio.run(send_all())
    assert np.array_equal(np.concatenate([a.labels for a in answers]), direct.labels)
    assert np.allclose(np.concatenate([a.lengths for a in answers]), direct.lengths, atol=1e-5)
    assert np.allclose(np.concatenate([a.reconstructions for a in answers]), direct.reconstructions, atol=1e-5)
    assert sum(batcher.batch_sizes) == 120 and max(batcher.batch_sizes) > 3 and max(batcher.batch_sizes) <= 16


def test_bentomls_dispatcher_splits_a_request_over_the_cap_and_joins_its_rows(runtime, mnist_root):
    x = read_split("test", mnist_root, 20)[0][:, None]
    batcher = BATCHERS["bentoml"](runtime, 8)
    answer = asyncio.run(batcher.predict_async(x))
    assert np.array_equal(answer.labels, runtime.predict(x).labels)
    assert max(batcher.batch_sizes) <= 8 and sum(batcher.batch_sizes) == 20


class Held:
    """The runtime, whose runs wait until `release` is set; `running` is set when one has started. With it a test
    knows a batch is running because it is told, not because some milliseconds have passed."""

    def __init__(self, runtime: CapsNetRuntime) -> None:
        self.runtime, self.image_size = runtime, runtime.image_size
        self.running, self.release = threading.Event(), threading.Event()

    def predict(self, images: np.ndarray):
        self.running.set()
        assert self.release.wait(120), "never released"
        return self.runtime.predict(images)


def test_a_request_cancelled_while_it_waits_never_runs(runtime):
    held = Held(runtime)
    batcher = MicroBatcher(held)
    big = np.random.default_rng(0).random((256, 1, 28, 28), dtype=np.float32)

    async def scenario():
        busy = asyncio.ensure_future(batcher.predict_async(big))  # occupies the batcher's thread
        await asyncio.to_thread(held.running.wait, 120)
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(batcher.predict_async(big[:5]), 0.01)  # its client gave up while it waited
        held.release.set()
        await busy
        return await batcher.predict_async(big[:3])

    assert asyncio.run(scenario()).labels.shape == (3,)
    assert batcher.batch_sizes == [256, 3]


def test_a_lone_request_runs_at_once_alone(runtime, mnist_root):
    x = read_split("test", mnist_root, 2)[0][:, None]
    batcher = MicroBatcher(runtime)
    assert batcher.predict(x).labels.shape == (2,)
    assert batcher.batch_sizes == [2]


def wait_for(condition, bound: float = 120) -> None:
    started = time.monotonic()
    while not condition():
        assert time.monotonic() - started < bound, "waited past the bound"
        time.sleep(0.005)


def test_a_full_queue_refuses_at_once(runtime):
    """One batch running, one request waiting (max_waiting=1): the next is refused at once, and it recovers."""
    held = Held(runtime)
    batcher = MicroBatcher(held, max_waiting=1)
    digit = np.zeros((1, 1, 28, 28), np.float32)
    running = batcher.submit(digit)
    held.running.wait(120)
    waiting = batcher.submit(digit)
    with pytest.raises(Overloaded, match="1 requests are already waiting"):
        batcher.submit(digit)
    held.release.set()
    assert running.result(120).labels.shape == waiting.result(120).labels.shape == (1,)
    assert batcher.predict(digit).labels.shape == (1,)


def test_a_full_queue_is_answered_503_over_http(runtime):
    """The batcher's refusal as a client sees it, through the route table: 503 and its reason."""
    held = Held(runtime)
    batcher, settings = MicroBatcher(held, max_waiting=1), Settings.from_env()
    worker = Bound()
    worker.bind(Routes(runtime, batcher, settings), OpenInference(runtime, batcher, settings, ready=lambda: True))
    body = {"images": np.zeros((1, 28, 28)).tolist()}
    with TestClient(Front(Starlette(), worker, Drain(5, 10))) as client, ThreadPoolExecutor(2) as pool:
        first = pool.submit(client.post, "/classify", json=body)
        held.running.wait(120)
        second = pool.submit(client.post, "/classify", json=body)
        wait_for(lambda: batcher.waiting.qsize() == 1)
        refused = client.post("/classify", json=body)
        assert refused.status_code == 503 and "already waiting" in refused.json()["error"]
        held.release.set()
        assert first.result(120).status_code == second.result(120).status_code == 200


def test_a_request_larger_than_the_cap_runs_alone_and_is_not_merged(runtime, mnist_root):
    x = read_split("test", mnist_root, 40)[0][:, None]
    batcher = MicroBatcher(runtime, max_batch=8)
    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(batcher.predict, [x[:20], x[20:22], x[22:24], x[24:40]]))
    assert [len(a.labels) for a in answers] == [20, 2, 2, 16]
    assert sorted(batcher.batch_sizes)[-2:] == [16, 20]  # the large ones ran alone
    assert all(size <= 8 for size in batcher.batch_sizes if size not in (16, 20))


def test_the_merge_cap_is_the_served_files_measured_best_batch(runtime):
    """Export times each file at batch 1 to 256 on the CPU and stores the fastest: the service merges up to it."""
    import json

    rates = json.loads(runtime.metadata["cpu_images_per_s"])
    assert set(rates) == {"1", "2", "4", "8", "16", "32", "64", "128", "256"} and min(rates.values()) > 0
    assert runtime.merge_cap == int(runtime.metadata["cpu_best_batch"]) == int(max(rates, key=rates.get))


def test_a_load_step_split_read_from_the_metrics_text():
    """loadtest/prometheus.py reads the batcher's histograms as prometheus_client writes them, and the difference
    between two scrapes is the mean queue time, run time and batch size of what ran between them."""
    from prometheus_client import CollectorRegistry, Histogram, generate_latest

    from loadtest.prometheus import parse, split
    from serving.metrics import COUNTS, SECONDS

    registry = CollectorRegistry()
    metrics = BatcherMetrics(*(Histogram(name, name, buckets=buckets, registry=registry) for name, buckets in (
        ("capsnet_batch_queue_seconds", SECONDS), ("capsnet_batch_run_seconds", SECONDS),
        ("capsnet_batch_requests", COUNTS), ("capsnet_batch_images", COUNTS))))
    metrics.observe([0.5], 1.0, 8)  # before the step
    before = parse(generate_latest(registry).decode())
    metrics.observe([0.001, 0.003], 0.004, 16)
    metrics.observe([0.002], 0.002, 8)
    assert split(before, parse(generate_latest(registry).decode())) == {
        "queue_ms": 2.0, "compute_ms": 3.0, "batch_requests": 1.5, "batch_images": 12.0, "batches": 2.0,
        "requests": 3.0}
    assert split(before, before)["queue_ms"] is None
