"""The batch size at which a graph runs fastest on this machine's CPU, measured at export.

ONNX Runtime's images/s on the CPU rise with the batch size and then fall (the working set outgrows the
caches): the service caps the batches it merges from concurrent requests at the best size, read from
the served file's metadata (`cpu_best_batch`), so that merging never makes the model slower per image.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from export.artifact import CLASSIFY_OUTPUTS, INPUT, cpu_session
from timing import by_batch

BATCHES = (1, 2, 4, 8, 16, 32, 64, 128, 256)
SECONDS_PER_BATCH = 0.3


def images_per_s(onnx_path: Path | str, images: np.ndarray, batches: tuple[int, ...] = BATCHES,
                 seconds: float = SECONDS_PER_BATCH) -> dict[int, float]:
    """Images/s of /classify's run (lengths and reconstruction) at each batch size, ONNX Runtime's default threads."""
    session = cpu_session(onnx_path)
    return by_batch(lambda x: session.run(list(CLASSIFY_OUTPUTS), {INPUT: x}), images, batches, seconds)


def best_batch_metadata(onnx_path: Path | str, images: np.ndarray, seconds: float = SECONDS_PER_BATCH
                        ) -> dict[str, Any]:
    """The metadata entries: cpu_best_batch, and cpu_images_per_s (batch -> images/s; stored as JSON), each batch
    size timed for `seconds`."""
    rates = images_per_s(onnx_path, images, seconds=seconds)
    return {"cpu_best_batch": str(max(rates, key=rates.get)), "cpu_images_per_s": {str(b): r for b, r in rates.items()}}
