"""Checkpoint -> one static ONNX graph (routing unrolled, dynamic batch), then verification.

Verification is part of export: the checker (full_check), ONNX Runtime against PyTorch on real
MNIST test digits at several batch sizes, and a second runtime (onnx.reference) on a few digits.
A failed check raises VerificationError, and the CLI exits non-zero.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnx.reference import ReferenceEvaluator

from serving.runtime import INPUT, OUTPUTS  # the graph's I/O names, defined once beside the service
from training.checkpoint import load_weights, write_json
from training.data import DEFAULT_ROOT, load_split
from training.model import CapsNet

DEFAULT_OPSET = 18
TOLERANCE = {"lengths": 1e-4, "reconstruction": 1e-3}
VERIFY_BATCH_SIZES = (1, 7, 256)


class VerificationError(RuntimeError):
    """The exported graph does not match PyTorch within the tolerances."""


def report_path(onnx_path: Path | str) -> Path:
    return Path(onnx_path).with_suffix(".verify.json")


def export_onnx(model: CapsNet, out: Path | str, opset: int = DEFAULT_OPSET) -> Path:
    """Write model (eval mode, decoder on the longest capsule) as one self-contained ONNX file."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    model = model.eval().cpu()
    example = torch.rand(2, 1, model.cfg.image_size, model.cfg.image_size)
    batch = torch.export.Dim("batch", min=1, max=65536)
    program = torch.onnx.export(
        model, (example,), input_names=[INPUT], output_names=list(OUTPUTS), opset_version=opset,
        dynamo=True, external_data=False, dynamic_shapes={"x": {0: batch}}, optimize=True,
    )
    tmp = out.with_name(out.name + ".tmp")
    program.save(str(tmp), external_data=False)
    tmp.replace(out)
    return out


def set_metadata(onnx_path: Path | str, metadata: dict[str, Any]) -> None:
    """Store metadata as the model's metadata_props (strings; dicts as JSON)."""
    proto = onnx.load(str(onnx_path))
    del proto.metadata_props[:]
    for key, value in metadata.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value if isinstance(value, str) else json.dumps(value)
    onnx.save(proto, str(onnx_path))


def ort_outputs(session: ort.InferenceSession, images: np.ndarray, batch_size: int) -> dict[str, np.ndarray]:
    parts = [session.run(list(OUTPUTS), {INPUT: images[i:i + batch_size]}) for i in range(0, len(images), batch_size)]
    return {name: np.concatenate([p[k] for p in parts]) for k, name in enumerate(OUTPUTS)}


@torch.no_grad()
def torch_outputs(model: CapsNet, images: np.ndarray, batch_size: int = 256) -> dict[str, np.ndarray]:
    parts = [model(torch.from_numpy(images[i:i + batch_size])) for i in range(0, len(images), batch_size)]
    return {name: torch.cat([p[k] for p in parts]).numpy() for k, name in enumerate(OUTPUTS)}


def compare(reference: dict[str, np.ndarray], candidate: dict[str, np.ndarray]) -> dict[str, float]:
    return {
        "max_abs_diff_lengths": float(np.abs(reference["lengths"] - candidate["lengths"]).max()),
        "max_abs_diff_poses": float(np.abs(reference["poses"] - candidate["poses"]).max()),
        "max_abs_diff_reconstruction": float(np.abs(reference["reconstruction"] - candidate["reconstruction"]).max()),
        "argmax_agreement": float((reference["lengths"].argmax(1) == candidate["lengths"].argmax(1)).mean()),
    }


def check(name: str, diffs: dict[str, float]) -> list[str]:
    failures = []
    if diffs["max_abs_diff_lengths"] > TOLERANCE["lengths"]:
        failures.append(f"{name}: max |d lengths| {diffs['max_abs_diff_lengths']:.2e} > {TOLERANCE['lengths']}")
    if diffs["max_abs_diff_reconstruction"] > TOLERANCE["reconstruction"]:
        failures.append(f"{name}: max |d reconstruction| {diffs['max_abs_diff_reconstruction']:.2e}"
                        f" > {TOLERANCE['reconstruction']}")
    if diffs["argmax_agreement"] < 1.0:
        failures.append(f"{name}: argmax agreement {diffs['argmax_agreement']:.4%} < 100%")
    return failures


def ort_accuracy(session: ort.InferenceSession, images: np.ndarray, labels: np.ndarray, batch_size: int = 256
                 ) -> float:
    return float((ort_outputs(session, images, batch_size)["lengths"].argmax(1) == labels).mean())


def verify(onnx_path: Path | str, model: CapsNet, images: np.ndarray, labels: np.ndarray, reference_digits: int = 2
           ) -> dict[str, Any]:
    """All checks on onnx_path; returns the report, raises VerificationError if any check fails."""
    onnx_path = Path(onnx_path)
    onnx.checker.check_model(str(onnx_path), full_check=True)
    expected = torch_outputs(model, images)
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    report: dict[str, Any] = {"digits": len(images), "checker": "onnx.checker.check_model(full_check=True): ok",
                              "tolerance": TOLERANCE, "onnxruntime": {}}
    failures = []
    for batch_size in VERIFY_BATCH_SIZES:
        diffs = compare(expected, ort_outputs(session, images, batch_size))
        report["onnxruntime"][f"batch_{batch_size}"] = diffs
        failures += check(f"onnxruntime batch {batch_size}", diffs)
    reference = ReferenceEvaluator(str(onnx_path))
    few = images[:reference_digits]
    got = dict(zip(OUTPUTS, reference.run(list(OUTPUTS), {INPUT: few})))
    diffs = compare({k: v[:reference_digits] for k, v in expected.items()}, got)
    report["onnx_reference"] = {"digits": reference_digits, **diffs}
    failures += check("onnx.reference", diffs)
    report["torch_accuracy_on_verified_digits"] = float((expected["lengths"].argmax(1) == labels).mean())
    report["passed"] = not failures
    if failures:
        raise VerificationError("; ".join(failures))
    return report


def export_and_verify(checkpoint: Path | str, out: Path | str, opset: int = DEFAULT_OPSET, verify_digits: int = 1000,
                      accuracy_digits: int | None = None, data_root: Path | str = DEFAULT_ROOT,
                      variants: tuple[str, ...] = ()) -> dict[str, Any]:
    """Export checkpoint to out, verify it, measure test accuracy through ORT, store metadata and report.

    variants ("int8", "fp16") are then written beside out and measured on the same test digits.
    """
    from export.variants import CALIBRATION_DIGITS, build_variants

    started = time.time()
    model, info = load_weights(checkpoint)
    export_onnx(model, out, opset)
    x_test, y_test = load_split("test", data_root, accuracy_digits)
    images, labels = x_test.numpy(), y_test.numpy()
    report = verify(out, model, images[:verify_digits], labels[:verify_digits])
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    accuracy = ort_accuracy(session, images, labels)
    metadata = {
        "model_name": "capsnet-mnist",
        "source_weights": Path(checkpoint).name,
        "source_sha256": info["sha256"],
        "config": info["config"],
        "routing_iterations": str(info["config"]["routing_iters"]),
        "opset": str(opset),
        "test_accuracy_ort": f"{accuracy:.4f}",
        "test_digits": str(len(images)),
        "variant": "fp32",
    }
    set_metadata(out, metadata)
    calibration = load_split("train", data_root, CALIBRATION_DIGITS)[0].numpy() if variants else None
    report.update({"onnx": str(out), "metadata": metadata, "test_accuracy_ort": accuracy, "test_digits": len(images),
                   "variants": build_variants(out, list(variants), calibration, images, labels, metadata),
                   "seconds": round(time.time() - started, 1)})
    write_json(report_path(out), report)
    return report
