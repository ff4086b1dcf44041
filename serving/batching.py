"""Adaptive batching inside the service process: concurrent requests share one ONNX Runtime run.

One worker thread owns the session's runs. It takes the oldest waiting request, adds every other
request already waiting while the batch stays within max_batch images (the size the model runs fastest
at: the runtime's merge_cap; a larger single request runs alone), runs them as one batch and hands
each request its rows. Nothing waits on a timer: at low load a request runs alone at once; under load, requests pile
up while a batch runs and form the next one.

Overload over HTTP is BentoML's: past MAX_CONCURRENCY requests in the service it answers 429 at once.
The queue holds at most as many, so over HTTP it never fills; its Overloaded (503) guards in-process
callers that bypass BentoML.
"""

from __future__ import annotations

import queue
import threading
from concurrent.futures import Future

import numpy as np

from serving.runtime import MAX_BATCH, CapsNetRuntime, Prediction

MAX_CONCURRENCY = 128  # requests inside the service at once (BentoML's traffic.max_concurrency; 429 past it)
MAX_WAITING = MAX_CONCURRENCY  # requests queued before new ones are refused (503, in-process callers only)


class Overloaded(RuntimeError):
    """Too many requests are waiting (HTTP 503)."""


class MicroBatcher:
    def __init__(self, runtime: CapsNetRuntime, max_batch: int = MAX_BATCH, max_waiting: int = MAX_WAITING):
        self.runtime = runtime
        self.max_batch = max_batch
        self.waiting: queue.Queue[tuple[np.ndarray, Future]] = queue.Queue(maxsize=max_waiting)
        self.batch_sizes: list[int] = []  # recent batch sizes, for tests and metrics
        threading.Thread(target=self._loop, name="capsnet-batcher", daemon=True).start()

    def predict(self, images: np.ndarray, timeout: float = 30.0) -> Prediction:
        """images: validated float32 (N, 1, 28, 28); N may exceed max_batch (it then runs alone)."""
        done: Future = Future()
        try:
            self.waiting.put_nowait((images, done))
        except queue.Full:
            raise Overloaded(f"{self.waiting.maxsize} requests are already waiting; try again shortly") from None
        return done.result(timeout)

    def _take(self, first: tuple[np.ndarray, Future]) -> tuple[list[tuple[np.ndarray, Future]], object]:
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
            try:
                result = self.runtime.predict(np.concatenate([images for images, _ in items]))
            except Exception as err:  # noqa: BLE001 - every waiting request hears about the failure
                for _, done in items:
                    done.set_exception(err)
                continue
            self.batch_sizes = (self.batch_sizes + [len(result.labels)])[-1000:]
            start = 0
            for images, done in items:
                rows = slice(start, start + len(images))
                done.set_result(Prediction(result.labels[rows], result.lengths[rows], result.reconstructions[rows]))
                start += len(images)
