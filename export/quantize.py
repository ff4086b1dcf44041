"""int8 variant for the CPU: static QDQ quantization of the two convolutions (`python -m export.quantize`).

Not part of `make export` yet: measured on the published model it runs about 2.2x faster than fp32
on the 2-core CPU but loses 2 to 6 points of accuracy (BENCHMARKS.md), far over the 0.1-point bar.

Per-channel int8 weights and calibrated int8 activations for Conv1 and PrimaryCaps, which hold
nearly all of the model's arithmetic; the routing MatMuls stay float (quantizing them too measured
slower on this CPU). Calibration uses real MNIST training digits, never test digits.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, quantize_static
from onnxruntime.quantization.shape_inference import quant_pre_process

from export.onnx_export import INPUT, ort_accuracy
from training.data import DEFAULT_ROOT, load_split

METHODS = {"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile,
           "entropy": CalibrationMethod.Entropy}


class DigitReader(CalibrationDataReader):
    def __init__(self, images: np.ndarray, batch_size: int = 50):  # equal batches: histogram methods need them
        self.batches = iter([images[i:i + batch_size] for i in range(0, len(images), batch_size)])

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch = next(self.batches, None)
        return None if batch is None else {INPUT: batch}


def quantize_int8(fp32_path: Path | str, out: Path | str, calibration: np.ndarray, method: str = "minmax") -> Path:
    """Write the int8 QDQ model of fp32_path to out, calibrated on calibration (N, 1, 28, 28) float32."""
    out = Path(out)
    with tempfile.TemporaryDirectory() as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        quant_pre_process(str(fp32_path), str(prepared), skip_symbolic_shape=True)
        quantize_static(
            str(prepared), str(out.with_name(out.name + ".tmp")), DigitReader(calibration),
            quant_format=QuantFormat.QDQ, op_types_to_quantize=["Conv"], per_channel=True,
            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, calibrate_method=METHODS[method],
        )
    out.with_name(out.name + ".tmp").replace(out)
    # keep the fp32 model's metadata (routing iterations, sha256 of the weights, ...)
    source = onnx.load(str(fp32_path), load_external_data=False)
    model = onnx.load(str(out))
    del model.metadata_props[:]
    model.metadata_props.extend(source.metadata_props)
    onnx.save(model, str(out))
    return out


def images_per_s(session: ort.InferenceSession, images: np.ndarray, repeats: int = 5) -> float:
    session.run(None, {INPUT: images})
    started = time.perf_counter()
    for _ in range(repeats):
        session.run(None, {INPUT: images})
    return repeats * len(images) / (time.perf_counter() - started)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(prog="python -m export.quantize", description=__doc__.splitlines()[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--onnx", type=Path, default=Path("artifacts/capsnet.onnx"), help="fp32 model")
    p.add_argument("--out", type=Path, default=Path("artifacts/capsnet-int8.onnx"), help="int8 model to write")
    p.add_argument("--calibration", choices=sorted(METHODS), default="percentile", help="calibration method")
    p.add_argument("--calibration-digits", type=int, default=1000, help="training digits to calibrate on")
    p.add_argument("--test-digits", type=int, default=None, help="test digits for the accuracy (all: 10,000)")
    p.add_argument("--data", type=Path, default=DEFAULT_ROOT, help="MNIST root folder")
    args = p.parse_args(argv)
    calibration = load_split("train", args.data, args.calibration_digits)[0].numpy()
    quantize_int8(args.onnx, args.out, calibration, args.calibration)
    x, y = (t.numpy() for t in load_split("test", args.data, args.test_digits))
    report = {}
    for name, path in (("fp32", args.onnx), ("int8", args.out)):
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        report[name] = {"accuracy": ort_accuracy(session, x, y), "images_per_s_batch64": images_per_s(session, x[:64])}
        print(f"{name}: accuracy {report[name]['accuracy']:.4%} on {len(x):,} test digits, "
              f"{report[name]['images_per_s_batch64']:.0f} images/s at batch 64", file=sys.stderr)
    speedup = report["int8"]["images_per_s_batch64"] / report["fp32"]["images_per_s_batch64"]
    loss = 100 * (report["fp32"]["accuracy"] - report["int8"]["accuracy"])
    print(f"int8/fp32 speed {speedup:.2f}x, accuracy loss {loss:.2f} points (bar: 0.1)", file=sys.stderr)
    return report


if __name__ == "__main__":
    main()
