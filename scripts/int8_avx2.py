"""The published int8 file on an AVX2-only CPU's kernels, on every test digit: its accuracy there against the
figure its card states, how far its lengths are from this CPU's kernels' and, on the first digits, from the graph's
meaning by onnx.reference (QEMU's emulator of an AMD EPYC Rome, export/avx2.py; slow: the 10,000 digits take
over half an hour on 2 cores; seconds on a CPU that is itself AVX2-only, whose own kernels are those).

    python scripts/int8_avx2.py [--model models/capsnet-mnist-int8.onnx] [--digits 10000] [--reference-digits 100]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from export.artifact import cpu_session, ort_outputs, reference_lengths  # noqa: E402
from export.avx2 import EMULATED_CPU, lengths_without_vnni, native_avx2  # noqa: E402
from export.onnx_export import on_canvas  # noqa: E402
from mnist import DEFAULT_ROOT, read_split  # noqa: E402
from timing import describe_cpu  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model", type=Path, default=ROOT / "models" / "capsnet-mnist-int8.onnx", help="an int8 file")
    p.add_argument("--digits", type=int, default=10_000, help="test digits, from the first")
    p.add_argument("--reference-digits", type=int, default=100, help="digits also run by onnx.reference")
    p.add_argument("--data", type=Path, default=DEFAULT_ROOT, help="MNIST root folder")
    args = p.parse_args(argv)

    session = cpu_session(args.model)
    images, labels = read_split("test", args.data, args.digits)
    images = on_canvas(images[:, None], session.get_inputs()[0].shape[-1])
    here = ort_outputs(session, images, 256)["lengths"]
    emulated = lengths_without_vnni(args.model, images)
    stated = json.loads(session.get_modelmeta().custom_metadata_map.get("test_accuracy_ort", "null"))
    accuracy = float(np.mean(emulated.argmax(1) == labels))
    kernels = ("its own kernels are the AVX2-only ones (nothing emulated)" if native_avx2() else
               f"emulated: {EMULATED_CPU} (AVX2, no AVX-512, no VNNI)")
    print(f"{args.model.name} on {len(images):,} test digits; this CPU: {describe_cpu()}; {kernels}")
    print(f"  this CPU's kernels:  accuracy {np.mean(here.argmax(1) == labels):.2%}")
    print(f"  AVX2-only kernels:   accuracy {accuracy:.2%}; max |d lengths| against this CPU's "
          f"{np.abs(emulated - here).max():.2e}, {int((emulated.argmax(1) != here.argmax(1)).sum())} labels differ")
    few = min(args.reference_digits, len(images))
    if few:
        graph = reference_lengths(args.model, images[:few])
        print(f"  against onnx.reference on the first {few} digits: AVX2-only kernels {np.abs(emulated[:few] - graph).max():.2e},"
              f" this CPU's {np.abs(here[:few] - graph).max():.2e}")
    print("  the file's stated accuracy (its metadata, the card's figure): "
          + ("none" if stated is None else f"{stated:.2%}"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
