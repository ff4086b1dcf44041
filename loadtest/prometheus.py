"""The service's side of a load test: its batcher's Prometheus histograms (serving/metrics.py) read from
/metrics before and after a step, and what the difference says about that step's requests.

    queue_ms       mean time a request waited for its batch
    compute_ms     mean model run per batch
    batch_images   mean images per batch (batch_requests: requests per batch)
"""

from __future__ import annotations

import urllib.request

SERIES = ("capsnet_batch_queue_seconds", "capsnet_batch_run_seconds", "capsnet_batch_requests", "capsnet_batch_images")


def parse(text: str) -> dict[str, float]:
    """Each batcher histogram's _sum and _count in Prometheus' text format (summed over label sets)."""
    found: dict[str, float] = {}
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        name = name.split("{", 1)[0]
        if name.endswith(("_sum", "_count")) and name.rsplit("_", 1)[0] in SERIES:
            found[name] = found.get(name, 0.0) + float(value.split()[0])
    return found


def scrape(url: str, timeout: float = 10.0) -> dict[str, float]:
    """The batcher's sums and counts now, from url's /metrics."""
    with urllib.request.urlopen(url.rstrip("/") + "/metrics", timeout=timeout) as answer:
        return parse(answer.read().decode())


def split(before: dict[str, float], after: dict[str, float]) -> dict[str, float | None]:
    """Between two scrapes: mean queue time per request and run time per batch (ms), mean batch size; None for
    what the window holds no sample of (no request reached the batcher, or the series is off)."""
    def grew(name: str) -> float:
        return after.get(name, 0.0) - before.get(name, 0.0)

    def mean(series: str, scale: float = 1.0) -> float | None:
        count = grew(series + "_count")
        return round(scale * grew(series + "_sum") / count, 2) if count > 0 else None

    return {"queue_ms": mean("capsnet_batch_queue_seconds", 1000), "compute_ms": mean("capsnet_batch_run_seconds", 1000),
            "batch_requests": mean("capsnet_batch_requests"), "batch_images": mean("capsnet_batch_images"),
            "batches": grew("capsnet_batch_run_seconds_count"), "requests": grew("capsnet_batch_requests_sum")}
