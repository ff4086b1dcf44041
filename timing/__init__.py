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


INSTRUCTION_SETS = {"avx2": "AVX2", "avx512f": "AVX-512", "avx512_vnni": "AVX-512 VNNI", "avx_vnni": "AVX-VNNI",
                    "amx_int8": "AMX"}  # /proc/cpuinfo's flag -> the name a reader knows; int8 answers and speeds hang on them


def cpu() -> dict[str, Any]:
    """The CPU a figure is measured on: its model name, the instruction sets above that it has, its usable cores."""
    import os
    import platform
    from pathlib import Path

    info = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    fields = dict(line.split(":", 1) for line in info.splitlines() if ":" in line)
    fields = {k.strip(): v.strip() for k, v in fields.items()}
    flags = set(fields.get("flags", "").split())
    return {"model": fields.get("model name", platform.processor() or platform.machine()),
            "instruction_sets": [name for flag, name in INSTRUCTION_SETS.items() if flag in flags],
            "cores": len(os.sched_getaffinity(0))}


def describe_cpu(info: dict[str, Any] | None = None) -> str:
    """'AMD EPYC, AVX2 + AVX-512 + AVX-512 VNNI, 2 cores': what a page says beside a figure."""
    info = info or cpu()
    return f"{info['model']}, {' + '.join(info['instruction_sets']) or 'no AVX2'}, {info['cores']} cores"
