import asyncio
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from serving.batching import BATCHERS, MicroBatcher, Overloaded, batcher_kind_from_env
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


@pytest.mark.parametrize("kind", sorted(BATCHERS))
def test_awaited_requests_share_runs_and_each_gets_its_rows(runtime, mnist_root, kind):
    """What the service does: the requests await the batcher on one event loop (ours, or BentoML's dispatcher)."""
    x = load_split("test", mnist_root, 120)[0].numpy()
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
    x = load_split("test", mnist_root, 20)[0].numpy()
    batcher = BATCHERS["bentoml"](runtime, 8)
    answer = asyncio.run(batcher.predict_async(x))
    assert np.array_equal(answer.labels, runtime.predict(x).labels)
    assert max(batcher.batch_sizes) <= 8 and sum(batcher.batch_sizes) == 20


def test_a_request_cancelled_while_it_waits_never_runs(runtime):
    batcher = MicroBatcher(runtime)
    big = np.random.default_rng(0).random((256, 1, 28, 28), dtype=np.float32)

    async def scenario():
        busy = asyncio.ensure_future(batcher.predict_async(big))  # occupies the batcher's thread
        await asyncio.sleep(0.05)
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(batcher.predict_async(big[:5]), 0.01)  # its client gave up
        await busy
        return await batcher.predict_async(big[:3])

    assert asyncio.run(scenario()).labels.shape == (3,)
    assert batcher.batch_sizes == [256, 3]


def test_on_off_settings_read_from_the_environment(monkeypatch):
    from serving.service import flag_from_env, metrics_from_env, tracing_from_env

    for raw, expected in [("1", True), ("yes", True), ("ON", True), ("0", False), ("off", False), ("no", False)]:
        monkeypatch.setenv("CAPSNET_SOME_FLAG", raw)
        assert flag_from_env("CAPSNET_SOME_FLAG", not expected) is expected
    monkeypatch.delenv("CAPSNET_SOME_FLAG")
    assert flag_from_env("CAPSNET_SOME_FLAG", True) and not flag_from_env("CAPSNET_SOME_FLAG", False)
    monkeypatch.delenv("CAPSNET_TRACING", raising=False)
    monkeypatch.delenv("CAPSNET_METRICS", raising=False)
    assert tracing_from_env() == {"excluded_urls": [".*"]} and metrics_from_env()  # the defaults
    monkeypatch.setenv("CAPSNET_TRACING", "1")
    monkeypatch.setenv("CAPSNET_METRICS", "0")
    assert tracing_from_env() == {} and not metrics_from_env()


def test_the_batcher_is_a_setting(monkeypatch):
    monkeypatch.delenv("CAPSNET_BATCHER", raising=False)
    assert batcher_kind_from_env() == "ours"
    monkeypatch.setenv("CAPSNET_BATCHER", "bentoml")
    assert batcher_kind_from_env() == "bentoml"
    monkeypatch.setenv("CAPSNET_BATCHER", "fastest")
    with pytest.raises(ValueError, match="CAPSNET_BATCHER must be one of"):
        batcher_kind_from_env()


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


def test_a_request_larger_than_the_cap_runs_alone_and_is_not_merged(runtime, mnist_root):
    x = load_split("test", mnist_root, 40)[0].numpy()
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


def test_workers_and_threads_come_from_the_environment(monkeypatch):
    from serving.runtime import threads_from_env, usable_cores, workers_from_env

    monkeypatch.delenv("CAPSNET_WORKERS", raising=False)
    monkeypatch.delenv("CAPSNET_THREADS", raising=False)
    assert workers_from_env() == max(1, usable_cores() // 2)
    monkeypatch.setenv("CAPSNET_WORKERS", "2")
    assert workers_from_env() == 2 and threads_from_env() == max(1, usable_cores() // 2)
    monkeypatch.setenv("CAPSNET_THREADS", "3")
    assert threads_from_env() == 3
    monkeypatch.setenv("CAPSNET_WORKERS", "1")
    monkeypatch.delenv("CAPSNET_THREADS")
    assert threads_from_env() == 0  # one worker: ONNX Runtime's own choice
    for bad in ("0", "-1", "two"):
        monkeypatch.setenv("CAPSNET_WORKERS", bad)
        with pytest.raises(ValueError, match="CAPSNET_WORKERS"):
            workers_from_env()
