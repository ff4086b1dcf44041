"""ONNX Runtime's answers on an x86-64 CPU without VNNI (AVX2 only), from any x86-64 machine.

ONNX Runtime picks its int8 kernels by what the CPU says it has (CPUID): with VNNI its u8 x s8 products are
summed in 32 bits; with AVX2 only, pairs of them are first added in 16 bits, which can saturate. An int8 file may
therefore mean one thing on one CPU and another elsewhere. To see the AVX2 kernels' answers on a CPU that has
VNNI, the same Python runs here under QEMU's user-mode emulator of an AMD EPYC Rome (AVX2, no AVX-512, no VNNI),
whose CPUID ONNX Runtime reads; on a CPU that is itself AVX2-only, its own kernels are those, and nothing is
emulated. Slow (about 8 images/s on 2 cores: a few dozen digits in a test), but it runs the very kernels an
AVX2-only CPU runs: the published full-range int8 file's lengths move by 6.22e-3 under it,
as measured on a real AMD EPYC with AVX2 only (docs/export.md).

    python -m export.avx2 ONNX IMAGES.npy LENGTHS.npy     (what the emulated process runs)
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

QEMU = "qemu-x86_64"  # Debian's qemu-user (make setup installs it)
EMULATED_CPU = "EPYC-Rome-v2"  # AVX2 and FMA, no AVX-512, no VNNI
ROOT = Path(__file__).resolve().parents[1]


def emulator() -> str | None:
    """The emulator's path, or None where qemu-user is not installed."""
    return shutil.which(QEMU)


def native_avx2() -> bool:
    """Whether this CPU is itself x86-64 with AVX2 and none of AVX-512, VNNI or AMX (the CI VM's AMD EPYC): ONNX
    Runtime runs the AVX2-only kernels here, and nothing needs emulating."""
    import platform

    from timing import cpu

    return platform.machine() == "x86_64" and cpu()["instruction_sets"] == ["AVX2"]


def lengths_here(onnx_path: Path | str, images: np.ndarray) -> np.ndarray:
    """The graph's `lengths` on images by ONNX Runtime's CPU kernels for this CPU, 64 images per run."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return np.concatenate([session.run(["lengths"], {name: images[i:i + 64]})[0] for i in range(0, len(images), 64)])


def lengths_without_vnni(onnx_path: Path | str, images: np.ndarray, timeout: float = 1800) -> np.ndarray:
    """The graph's `lengths` on images (N, 1, S, S) by ONNX Runtime's CPU kernels for AVX2 without VNNI: this CPU's
    own where it is such a CPU, else under QEMU."""
    if native_avx2():
        return lengths_here(onnx_path, np.ascontiguousarray(images, dtype=np.float32))
    qemu = emulator()
    if qemu is None:
        raise RuntimeError(f"{QEMU} is not installed (Debian's qemu-user; make setup installs it)")
    with tempfile.TemporaryDirectory() as folder:
        inputs, outputs = Path(folder) / "images.npy", Path(folder) / "lengths.npy"
        np.save(inputs, np.ascontiguousarray(images, dtype=np.float32))
        run = subprocess.run([qemu, "-cpu", EMULATED_CPU, sys.executable, "-m", "export.avx2", str(onnx_path),
                              str(inputs), str(outputs)], cwd=ROOT, capture_output=True, text=True, timeout=timeout)
        if run.returncode != 0:  # QEMU warns about each CPUID feature its translator lacks: not an error
            errors = [line for line in run.stderr.splitlines() if "TCG doesn't support" not in line]
            raise RuntimeError(f"the emulated run failed: {' '.join(errors)[-2000:]}")
        return np.load(outputs)


def main(argv: list[str]) -> None:
    onnx_path, inputs, outputs = argv
    np.save(outputs, lengths_here(onnx_path, np.load(inputs)))
