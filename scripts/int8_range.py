"""Does ONNX Runtime compute the int8 graph it is given, on this CPU? With full-range and reduced-range weights.

ONNX Runtime's u8 x s8 kernels for CPUs without VNNI (AVX2 only) add pairs of products in 16 bits, which can
saturate; 7-bit weights (`reduce_range`) cannot. For each setting this makes the int8 variant of an fp32
file (the export's own make_int8, the export's calibration digits), then prints its accuracy through ONNX
Runtime on the test digits and the largest |d lengths| against the graph's meaning by onnx.reference (the
spec's own evaluator) on the first few digits.

    python scripts/int8_range.py [--model models/capsnet-mnist.onnx] [--digits 10000] [--reference-digits 3]
                                 [--calibration-digits 1000]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from export.artifact import cpu_session, ort_accuracy, ort_outputs, reference_lengths  # noqa: E402
from export.variants import CALIBRATION_DIGITS, make_int8  # noqa: E402
from mnist import DEFAULT_ROOT, read_split  # noqa: E402

# ONNX Runtime against the graph without saturation: an activation on a rounding boundary may move by one step
# (2.9e-5 on a barely trained model, 6e-8 on the published one); saturation costs 3.6e-3 and 0.018 there
ROUNDING = 1e-4


def measure(model: Path, data: Path, digits: int, reference_digits: int,
            calibration_digits: int = CALIBRATION_DIGITS) -> list[dict]:
    calibration = read_split("train", data, calibration_digits)[0][:, None]
    images, labels = read_split("test", data, digits)
    images = images[:, None]
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for reduce_range in (False, True):
            path = make_int8(model, Path(folder) / f"int8-{reduce_range}.onnx", calibration, reduce_range)
            session, few = cpu_session(path), images[:reference_digits]
            ours = ort_outputs(session, few, len(few))["lengths"]
            rows.append({"reduce_range": reduce_range, "accuracy": ort_accuracy(session, images, labels),
                         "max_abs_diff_against_graph": float(np.abs(ours - reference_lengths(path, few)).max())})
    return rows


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model", type=Path, default=ROOT / "models" / "capsnet-mnist.onnx", help="the fp32 ONNX file")
    p.add_argument("--digits", type=int, default=10_000, help="test digits behind the accuracy")
    p.add_argument("--reference-digits", type=int, default=3, help="digits run through onnx.reference (slow)")
    p.add_argument("--calibration-digits", type=int, default=CALIBRATION_DIGITS, help="the export's own count")
    p.add_argument("--data", type=Path, default=DEFAULT_ROOT, help="MNIST root folder")
    args = p.parse_args(argv)
    rows = measure(args.model, args.data, args.digits, args.reference_digits, args.calibration_digits)
    for row in rows:
        exact = "computes the graph" if row["max_abs_diff_against_graph"] <= ROUNDING else "differs"
        print(f"reduce_range={row['reduce_range']!s:5}  accuracy {row['accuracy']:.2%} on {args.digits:,} digits  "
              f"max |d lengths| against the graph {row['max_abs_diff_against_graph']:.2e} ({exact})")
    return rows


if __name__ == "__main__":
    main()
