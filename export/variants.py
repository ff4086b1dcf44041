"""The int8 (CPU) and fp16 (GPU) variants of the exported fp32 graph, each held to an accuracy bar.

int8: static QDQ quantization of the two convolutions, which hold nearly all of the arithmetic
(7-bit per-channel int8 weights, uint8 activations, percentile calibration on 1,000 MNIST *training*
digits); the routing MatMuls stay float (quantizing them too measured slower on this CPU).
fp16: every float tensor in half precision, float32 input and outputs kept (Casts at the edges).

Each variant's accuracy on the test digits is measured through ONNX Runtime on the CPU against the
fp32 graph's, and stored in its metadata (`meets_accuracy_bar`), which the service reads to pick its
default variant.
"""

from __future__ import annotations

import contextlib
import io
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, quantize_static
from onnxruntime.quantization.shape_inference import quant_pre_process
from onnxruntime.transformers.float16 import convert_float_to_float16

from export.artifact import INPUT, cpu_session, ort_accuracy, set_metadata, variant_path
from export.batchsize import BATCHES, SECONDS_PER_BATCH, best_batch_metadata

ACCURACY_BAR_POINTS = {"int8": 0.1, "fp16": 0.05}  # largest accepted test-accuracy loss against fp32
CALIBRATION_DIGITS = 1000


class DigitReader(CalibrationDataReader):
    def __init__(self, images: np.ndarray, batch_size: int = 50):  # equal batches: histogram methods need them
        self.batches = iter([images[i:i + batch_size] for i in range(0, len(images), batch_size)])

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch = next(self.batches, None)
        return None if batch is None else {INPUT: batch}


@dataclass(frozen=True)
class Int8Recipe:
    """How the convolutions' weights are quantized (activations: uint8, calibrated; QDQ format).

    The published recipe is 7-bit (reduced-range) per-channel int8 weights: ONNX Runtime's u8 x s8 kernels for
    CPUs without VNNI (AVX2 only) add pairs of products in 16 bits, which full 8-bit weights can saturate, so a
    full-range file answers differently there (export/avx2.py shows it; scripts/int8_range.py measures every
    recipe below on both kernels, docs/export.md says why this one)."""

    reduce_range: bool = True
    per_channel: bool = True
    weights: str = "int8"  # or "uint8": ONNX Runtime's u8 x u8 kernels

    @property
    def name(self) -> str:
        return (f"{self.weights} weights, {'7' if self.reduce_range else '8'}-bit, "
                f"{'per channel' if self.per_channel else 'per tensor'}")


INT8 = Int8Recipe()
WEIGHT_TYPES = {"int8": QuantType.QInt8, "uint8": QuantType.QUInt8}


def make_int8(fp32_path: Path | str, out: Path | str, calibration: np.ndarray, recipe: Int8Recipe = INT8) -> Path:
    """Write the int8 QDQ model of fp32_path to out, calibrated on calibration (N, 1, S, S) float32."""
    out = Path(out)
    tmp = out.with_name(out.name + ".tmp")
    with tempfile.TemporaryDirectory() as folder:
        prepared = Path(folder) / "prepared.onnx"
        quant_pre_process(str(fp32_path), str(prepared), skip_symbolic_shape=True)
        with contextlib.redirect_stdout(io.StringIO()):  # the calibrator prints its progress
            quantize_static(
                str(prepared), str(tmp), DigitReader(calibration), quant_format=QuantFormat.QDQ,
                op_types_to_quantize=["Conv"], per_channel=recipe.per_channel, activation_type=QuantType.QUInt8,
                weight_type=WEIGHT_TYPES[recipe.weights], calibrate_method=CalibrationMethod.Percentile,
                reduce_range=recipe.reduce_range,
            )
    tmp.replace(out)
    return out


def make_fp16(fp32_path: Path | str, out: Path | str) -> Path:
    """Write the fp16 model of fp32_path to out; input and outputs stay float32."""
    out = Path(out)
    model = convert_float_to_float16(onnx.load(str(fp32_path)), keep_io_types=True)
    tmp = out.with_name(out.name + ".tmp")
    onnx.save(model, str(tmp))
    tmp.replace(out)
    return out


def build_variants(fp32_path: Path | str, variants: list[str], calibration: np.ndarray, images: np.ndarray,
                   labels: np.ndarray, fp32_metadata: dict[str, Any], batch_seconds: float = SECONDS_PER_BATCH
                   ) -> dict[str, dict[str, Any]]:
    """Write each variant beside fp32_path, measure it on (images, labels), store metadata; return reports."""
    fp32_accuracy = float(fp32_metadata["test_accuracy_ort"])
    reports = {}
    for name in variants:
        started = time.time()
        out = variant_path(fp32_path, name)
        if name == "int8":
            make_int8(fp32_path, out, calibration)
        elif name == "fp16":
            make_fp16(fp32_path, out)
        else:
            raise ValueError(f"unknown variant {name!r}: expected one of {', '.join(ACCURACY_BAR_POINTS)}")
        session = cpu_session(out)
        accuracy = ort_accuracy(session, images, labels)
        speed = best_batch_metadata(out, images[:max(BATCHES)], batch_seconds)
        loss = round(100 * (fp32_accuracy - accuracy), 4)
        report = {"onnx": str(out), "test_accuracy_ort": accuracy, "test_digits": len(images),
                  "accuracy_loss_points": loss, "accuracy_bar_points": ACCURACY_BAR_POINTS[name],
                  "meets_accuracy_bar": loss <= ACCURACY_BAR_POINTS[name],
                  "cpu_best_batch": int(speed["cpu_best_batch"]), "cpu_images_per_s": speed["cpu_images_per_s"],
                  **({"recipe": INT8.name} if name == "int8" else {})}
        set_metadata(out, {**fp32_metadata, "variant": name, "test_accuracy_ort": f"{accuracy:.4f}",
                           "accuracy_loss_points": str(loss), "accuracy_bar_points": str(report["accuracy_bar_points"]),
                           "meets_accuracy_bar": str(report["meets_accuracy_bar"]).lower(), **speed,
                           **({"int8_recipe": INT8.name} if name == "int8" else {})})
        report["seconds"] = round(time.time() - started, 1)
        reports[name] = report
    return reports
