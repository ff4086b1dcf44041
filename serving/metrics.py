"""The batcher seen from outside: Prometheus metrics beside BentoML's own on GET /metrics.

    capsnet_batch_queue_seconds     histogram: how long each request waited for the batch it ran in
    capsnet_batch_run_seconds       histogram: the model's run time per batch (one ONNX Runtime run)
    capsnet_batch_requests          histogram: requests merged into each batch
    capsnet_batch_images            histogram: images in each batch

A request's time in the service is its queue time plus its batch's run time plus HTTP and parsing; the mean
batch size is capsnet_batch_images_sum / capsnet_batch_images_count. Every request that reaches the batcher
counts: /classify, /classify_image, /reconstruct, the Open Inference Protocol (/explain runs outside it).
With CAPSNET_BATCHER=bentoml, BentoML's dispatcher holds the queue: its runs and sizes count, its queue times do not.
CAPSNET_METRICS=0 turns them off with BentoML's.

prometheus_client is imported when the first batcher is made, in the worker: BentoML sets its multiprocess
folder (PROMETHEUS_MULTIPROC_DIR) only then, and a client imported before it would keep its samples to itself.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any, Sequence

SECONDS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0)
COUNTS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


@dataclass(frozen=True)
class BatcherMetrics:
    queue_seconds: Any
    run_seconds: Any
    batch_requests: Any
    batch_images: Any

    def observe(self, waited: Sequence[float], run_seconds: float, images: int) -> None:
        """One batch: each of its requests' time in the queue, the model's run time, its image count."""
        for seconds in waited:
            self.queue_seconds.observe(seconds)
        self.observe_run(len(waited), run_seconds, images)

    def observe_run(self, requests: int, run_seconds: float, images: int) -> None:
        """One batch whose requests' queue times are not known (BentoML's dispatcher keeps them)."""
        self.run_seconds.observe(run_seconds)
        self.batch_requests.observe(requests)
        self.batch_images.observe(images)


@functools.cache
def batcher_metrics() -> BatcherMetrics:
    """The process's one set (a second registration of a name would fail)."""
    from prometheus_client import Histogram

    return BatcherMetrics(
        Histogram("capsnet_batch_queue_seconds", "Time a request waited for the batch it ran in", buckets=SECONDS),
        Histogram("capsnet_batch_run_seconds", "The model's run time per batch", buckets=SECONDS),
        Histogram("capsnet_batch_requests", "Requests merged into a batch", buckets=COUNTS),
        Histogram("capsnet_batch_images", "Images in a batch", buckets=COUNTS))
