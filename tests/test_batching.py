from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from serving.batching import MicroBatcher, Overloaded
from serving.runtime import CapsNetRuntime
from training.data import load_split


@pytest.fixture(scope="module")
def runtime(served_onnx):
    return CapsNetRuntime(served_onnx, device="cpu")


def test_concurrent_requests_share_runs_and_each_gets_its_rows(runtime, mnist_root):
    x = load_split("test", mnist_root, 120)[0].numpy()
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


def test_a_lone_request_runs_at_once_alone(runtime, mnist_root):
    x = load_split("test", mnist_root, 2)[0].numpy()
    batcher = MicroBatcher(runtime)
    assert batcher.predict(x).labels.shape == (2,)
    assert batcher.batch_sizes == [2]


def test_a_full_queue_refuses_at_once(runtime):
    batcher = MicroBatcher(runtime, max_waiting=1)
    big = np.random.default_rng(0).random((256, 1, 28, 28), dtype=np.float32)
    outcomes = []

    def send(_):
        try:
            batcher.predict(big)
            outcomes.append("ok")
        except Overloaded:
            outcomes.append("overloaded")

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(send, range(8)))
    assert "overloaded" in outcomes and "ok" in outcomes
    assert batcher.predict(big[:1]).labels.shape == (1,)  # and it recovers
