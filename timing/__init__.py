"""How fast something runs on images, measured one way everywhere (export's batch sizes, the load test's
in-process reference, the pinned measurement, the other runtimes): images per second over a span of time.

numpy and the standard library only, so that every package may use it.
"""

from __future__ import annotations

import time
from typing import Any, Callable

import numpy as np


def images_per_s(run: Callable[[np.ndarray], Any], images: np.ndarray, seconds: float, warm: bool = True) -> float:
    """How many of `images` per second `run(images)` goes through, called again and again for `seconds` (at least
    once), after one call to warm up when `warm`."""
    if warm:
        run(images)
    done, started = 0, time.perf_counter()
    while True:
        run(images)
        done += len(images)
        if (elapsed := time.perf_counter() - started) >= seconds:
            return done / elapsed


def by_batch(run: Callable[[np.ndarray], Any], images: np.ndarray, batches: tuple[int, ...], seconds: float
             ) -> dict[int, float]:
    """images_per_s at each batch size (the first `batch` images, repeated when there are fewer), rounded to 0.1."""
    return {batch: round(images_per_s(run, np.ascontiguousarray(np.resize(images, (batch, *images.shape[1:]))),
                                      seconds), 1)
            for batch in batches}
