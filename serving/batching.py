"""Adaptive batching inside the service process: concurrent requests share one ONNX Runtime run.

One worker thread owns the session's runs. It takes the oldest waiting request, adds every other
request already waiting while the batch stays within max_batch images (the size the model runs fastest
at: the runtime's merge_cap; a larger single request runs alone), runs them as one batch and hands
each request its rows. Nothing waits on a timer: at low load a request runs alone at once; under load, requests pile
up while a batch runs and form the next one. The service awaits it on its event loop (predict_async).

CAPSNET_BATCHER=bentoml swaps in BentoML's own adaptive batching (CorkBatcher) to compare the two:
docs/history.md says what they measured, and why this one stays the default.

Overload over HTTP is BentoML's: past MAX_CONCURRENCY requests in the service it answers 429 at once.
The queue holds at most as many, so over HTTP it never fills; its Overloaded (503) guards in-process
callers that bypass BentoML.
"""

from __future__ import annotations

import asyncio
import queue
import threading
import time
import typing as t
from concurrent.futures import Future

import anyio
import numpy as np

from serving import framework
from serving.errors import Overloaded
from serving.limits import MAX_BATCH, MAX_WAITING
from serving.metrics import BatcherMetrics
from serving.runtime import CapsNetRuntime, Prediction
from serving.settings import BATCHERS as BATCHER_NAMES

KEPT_SIZES = 1000  # recent batch sizes kept for tests
Waiting = tuple[np.ndarray, Future, float]  # a request's images, its answer to come, when it was queued


class MicroBatcher:
    def __init__(self, runtime: CapsNetRuntime, max_batch: int = MAX_BATCH, max_waiting: int = MAX_WAITING,
                 metrics: BatcherMetrics | None = None):
        self.runtime = runtime
        self.max_batch = max_batch
        self.metrics = metrics  # Prometheus' view of the batches (serving/metrics.py), None when off
        self.waiting: queue.Queue[Waiting] = queue.Queue(maxsize=max_waiting)
        self.batch_sizes: list[int] = []  # recent batch sizes (the last KEPT_SIZES to twice that), for tests
        threading.Thread(target=self._loop, name="capsnet-batcher", daemon=True).start()

    def submit(self, images: np.ndarray) -> Future:
        """Queue images (validated float32 (N, 1, S, S); N may exceed max_batch: it then runs alone) for the
        next batch; the future gets their Prediction. Raises Overloaded when the queue is full."""
        done: Future = Future()
        try:
            self.waiting.put_nowait((images, done, time.perf_counter()))
        except queue.Full:
            raise Overloaded(f"{self.waiting.maxsize} requests are already waiting; try again shortly") from None
        return done

    def predict(self, images: np.ndarray, timeout: float = 30.0) -> Prediction:
        """The Prediction for images, waiting in this thread."""
        return self.submit(images).result(timeout)

    async def predict_async(self, images: np.ndarray) -> Prediction:
        """The Prediction for images, awaited on the event loop: no thread waits for it. A request cancelled
        while it waits (its client's timeout) leaves the queue without running."""
        return await asyncio.wrap_future(self.submit(images))

    def _take(self, first: Waiting) -> tuple[list[Waiting], Waiting | None]:
        """first plus whatever else waits now, up to max_batch images; also the item that did not fit."""
        items, size = [first], len(first[0])
        while size < self.max_batch:
            try:
                item = self.waiting.get_nowait()
            except queue.Empty:
                return items, None
            if size + len(item[0]) > self.max_batch:
                return items, item
            items.append(item)
            size += len(item[0])
        return items, None

    def _loop(self) -> None:
        carried = None
        while True:
            items, carried = self._take(carried or self.waiting.get())
            items = [item for item in items if item[1].set_running_or_notify_cancel()]
            if not items:
                continue
            started = time.perf_counter()
            try:
                batch = items[0][0] if len(items) == 1 else np.concatenate([images for images, _, _ in items])
                result = self.runtime.predict(batch)
            except Exception as err:  # noqa: BLE001 - every waiting request hears about the failure
                for _, done, _ in items:
                    done.set_exception(err)
                continue
            if self.metrics:
                self.metrics.observe([started - queued for _, _, queued in items], time.perf_counter() - started,
                                     len(result.labels))
            self.batch_sizes.append(len(result.labels))
            if len(self.batch_sizes) > 2 * KEPT_SIZES:  # the recent ones, without copying the list on every batch
                del self.batch_sizes[:KEPT_SIZES]
            if len(items) == 1:
                items[0][1].set_result(result)
                continue
            start = 0
            for images, done, _ in items:
                rows = slice(start, start + len(images))
                done.set_result(Prediction(result.labels[rows], result.lengths[rows], result.reconstructions[rows]))
                start += len(images)


class CorkBatcher:
    """BentoML's adaptive batching in place of MicroBatcher, to compare the two (CAPSNET_BATCHER=bentoml).

    The CorkDispatcher that BentoML puts behind `@bentoml.api(batchable=True)`, set up as BentoML sets it up
    for such an API: its default max latency, the batch cap as max_batch_size, the model run in a thread.
    It waits on a 1 ms timer while it decides whether to run now or let the batch grow. (A batchable API
    itself would also parse every body with BentoML's JSON path, take no raw float32, and answer a bare
    array instead of /classify's labels and lengths, so the service uses the dispatcher, not the decorator.)
    The dispatcher is BentoML's internal class (serving/framework.py, `cork_dispatcher`).
    """

    def __init__(self, runtime: CapsNetRuntime, max_batch: int = MAX_BATCH, max_latency_ms: int = 60_000,
                 metrics: BatcherMetrics | None = None):
        CorkDispatcher = framework.cork_dispatcher()
        self.runtime = runtime
        self.max_batch = max_batch
        self.metrics = metrics  # its runs and sizes; the queue is the dispatcher's own
        self.batch_sizes: list[int] = []  # recent batch sizes, as MicroBatcher's
        dispatcher = CorkDispatcher(max_latency_ms, max_batch, fallback=self._dropped, get_batch_size=len,
                                    batch_dim=(0, 0))
        self._run = dispatcher(self._run_batches)

    @staticmethod
    def _dropped() -> t.NoReturn:
        raise Overloaded("the batcher dropped this request: it would have waited past its max latency")

    async def _run_batches(self, batches: t.Sequence[np.ndarray]) -> list[np.ndarray]:
        """Each request's rows of one run, as (n, S*S + 10) arrays: BentoML splits and joins arrays only."""
        started = time.perf_counter()
        result = await anyio.to_thread.run_sync(self.runtime.predict, np.concatenate(batches))
        if self.metrics:
            self.metrics.observe_run(len(batches), time.perf_counter() - started, len(result.labels))
        self.batch_sizes = (self.batch_sizes + [len(result.labels)])[-1000:]
        packed = np.concatenate([result.reconstructions.reshape(len(result.labels), -1), result.lengths], axis=1)
        return np.split(packed, np.cumsum([len(images) for images in batches])[:-1])

    async def predict_async(self, images: np.ndarray) -> Prediction:
        packed = await self._run(images)
        size = self.runtime.image_size
        lengths = packed[:, size * size:]
        return Prediction(lengths.argmax(1), lengths, packed[:, :size * size].reshape(-1, size, size))


Batcher = MicroBatcher | CorkBatcher
BATCHERS: dict[str, type[Batcher]] = dict(zip(BATCHER_NAMES, (MicroBatcher, CorkBatcher)))  # CAPSNET_BATCHER


def make_batcher(kind: str, runtime: CapsNetRuntime, metrics: BatcherMetrics | None = None) -> Batcher:
    """The batcher CAPSNET_BATCHER names (ours or bentoml); merged batches stop at the runtime's merge_cap."""
    return BATCHERS[kind](runtime, runtime.merge_cap, metrics=metrics)
