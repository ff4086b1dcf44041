"""Which int8 recipe means the same on every x86-64 CPU? Each one made, then measured on VNNI and AVX2 kernels.

ONNX Runtime's u8 x s8 kernels for CPUs without VNNI (AVX2 only) add pairs of products in 16 bits, which can
saturate; 7-bit weights (`reduce_range`) or u8 x u8 kernels cannot. For each recipe this makes the int8 variant
of an fp32 file (the export's own make_int8 and calibration digits) and prints: its accuracy through ONNX
Runtime on this CPU; the largest |d lengths| between this CPU's kernels and the AVX2 kernels (run under QEMU's
emulator of an AVX2-only EPYC, export/avx2.py) on the first digits, and how many labels differ; the largest
|d lengths| against the graph's meaning by onnx.reference (the spec's own evaluator); its speed at batch 64.

    python scripts/int8_range.py [--model models/capsnet-mnist.onnx] [--digits 10000] [--emulated-digits 256]
                                 [--reference-digits 3] [--calibration-digits 1000] [--seconds 2]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from export.artifact import INPUT, cpu_session, ort_accuracy, ort_outputs, reference_lengths  # noqa: E402
from export.avx2 import emulator, lengths_without_vnni, native_avx2  # noqa: E402
from export.onnx_export import on_canvas  # noqa: E402
from export.variants import CALIBRATION_DIGITS, INT8, Int8Recipe, make_int8  # noqa: E402
from mnist import DEFAULT_ROOT, read_split  # noqa: E402
from timing import describe_cpu, images_per_s  # noqa: E402

RECIPES = (Int8Recipe(reduce_range=False), INT8, Int8Recipe(per_channel=False),
           Int8Recipe(reduce_range=False, weights="uint8"))
# Two runs of one graph without saturation: an activation on a rounding boundary may move by one step
# (2.9e-5 on a barely trained model, 6e-8 on the published one); saturation costs 3.6e-3 and 0.018 there
ROUNDING = 1e-4


def measure(model: Path, data: Path, digits: int, emulated_digits: int, reference_digits: int,
            calibration_digits: int = CALIBRATION_DIGITS, seconds: float = 2.0,
            recipes: tuple[Int8Recipe, ...] = RECIPES) -> list[dict]:
    size = cpu_session(model).get_inputs()[0].shape[-1]
    calibration = on_canvas(read_split("train", data, calibration_digits)[0][:, None], size)
    images, labels = read_split("test", data, digits)
    images = on_canvas(images[:, None], size)
    batch = np.ascontiguousarray(np.resize(images, (64, *images.shape[1:])))
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for k, recipe in enumerate(recipes):
            path = make_int8(model, Path(folder) / f"int8-{k}.onnx", calibration, recipe)
            session = cpu_session(path)
            row = {"recipe": recipe.name, "reduce_range": recipe.reduce_range, "per_channel": recipe.per_channel,
                   "weights": recipe.weights, "accuracy": ort_accuracy(session, images, labels),
                   "images_per_s_batch_64": round(images_per_s(lambda x: session.run(None, {INPUT: x}), batch,
                                                               seconds), 1),
                   "bytes": path.stat().st_size}
            few = images[:reference_digits]
            row["max_abs_diff_against_graph"] = float(np.abs(ort_outputs(session, few, len(few))["lengths"]
                                                             - reference_lengths(path, few)).max())
            if (emulator() or native_avx2()) and emulated_digits:
                here = ort_outputs(session, images[:emulated_digits], 64)["lengths"]
                avx2 = lengths_without_vnni(path, images[:emulated_digits])
                row.update(max_abs_diff_avx2=float(np.abs(here - avx2).max()),
                           labels_differ_avx2=int((here.argmax(1) != avx2.argmax(1)).sum()))
            rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model", type=Path, default=ROOT / "models" / "capsnet-mnist.onnx", help="the fp32 ONNX file")
    p.add_argument("--digits", type=int, default=10_000, help="test digits behind the accuracy")
    p.add_argument("--emulated-digits", type=int, default=256,
                   help="digits run on the AVX2 kernels under QEMU (about 8/s; 0 skips, as does a machine without qemu-user)")
    p.add_argument("--reference-digits", type=int, default=3, help="digits run through onnx.reference (slow)")
    p.add_argument("--calibration-digits", type=int, default=CALIBRATION_DIGITS, help="the export's own count")
    p.add_argument("--seconds", type=float, default=2.0, help="time spent measuring each recipe's speed")
    p.add_argument("--data", type=Path, default=DEFAULT_ROOT, help="MNIST root folder")
    args = p.parse_args(argv)
    rows = measure(args.model, args.data, args.digits, args.emulated_digits, args.reference_digits,
                   args.calibration_digits, args.seconds)
    where = "this CPU's own (it is AVX2-only)" if native_avx2() else "under QEMU"
    print(f"on {describe_cpu()}; the AVX2 kernels {where} on {args.emulated_digits} digits; the export's recipe: {INT8.name}")
    for row in rows:
        exact = "computes the graph" if row["max_abs_diff_against_graph"] <= ROUNDING else "differs from the graph"
        avx2 = (f"AVX2 kernels: max |d lengths| {row['max_abs_diff_avx2']:.2e}, {row['labels_differ_avx2']} labels differ"
                if "max_abs_diff_avx2" in row else "AVX2 kernels: not run")
        print(f"{row['recipe']:34}  {row['accuracy']:.2%} on {args.digits:,} digits  {exact} "
              f"({row['max_abs_diff_against_graph']:.1e})  {avx2}  {row['images_per_s_batch_64']:,.0f} images/s at batch 64")
    return rows


if __name__ == "__main__":
    main()
