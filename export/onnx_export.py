"""Checkpoint -> one static ONNX graph (routing unrolled, dynamic batch), then verification.

Verification is part of export: the checker (full_check), ONNX Runtime against PyTorch on real
MNIST test digits at several batch sizes, and a second runtime (onnx.reference) on a few digits.
A failed check raises VerificationError, and the CLI exits non-zero.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from onnx.reference import ReferenceEvaluator

from export.artifact import INPUT, OUTPUTS, VARIANTS, cpu_session, ort_accuracy, ort_outputs, set_metadata, variant_path
from export.variants import CALIBRATION_DIGITS, build_variants
from training.checkpoint import load_weights, write_json
from mnist import DEFAULT_ROOT, read_split
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


def verify(onnx_path: Path | str, model: CapsNet, images: np.ndarray, labels: np.ndarray, reference_digits: int = 2
           ) -> dict[str, Any]:
    """All checks on onnx_path; returns the report, raises VerificationError if any check fails."""
    onnx_path = Path(onnx_path)
    onnx.checker.check_model(str(onnx_path), full_check=True)
    expected = torch_outputs(model, images)
    session = cpu_session(onnx_path)
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
    Everything is made in a staging folder beside out and moved into place only when all of it
    passed, so a failed export writes nothing; variant files beside out that this export did not
    make are removed, so that no variant of older weights stays next to the new graph.
    """
    started = time.time()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    model, info = load_weights(checkpoint)
    images, labels = read_split("test", data_root, accuracy_digits)
    images = images[:, None]
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=".export-") as folder:
        staged = Path(folder) / out.name
        export_onnx(model, staged, opset)
        report = verify(staged, model, images[:verify_digits], labels[:verify_digits])
        accuracy = ort_accuracy(cpu_session(staged), images, labels)
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
        set_metadata(staged, metadata)
        calibration = read_split("train", data_root, CALIBRATION_DIGITS)[0][:, None] if variants else None
        built = build_variants(staged, list(variants), calibration, images, labels, metadata)
        # the fp32 file names its variants: the service finds them through this, not through our code
        set_metadata(staged, {**metadata, "variants": {name: variant_path(out, name).name for name in built}})
        for name, variant in built.items():
            variant["onnx"] = str(variant_path(out, name))
        report.update({"onnx": str(out), "metadata": metadata, "test_accuracy_ort": accuracy,
                       "test_digits": len(images), "variants": built, "seconds": round(time.time() - started, 1)})
        for name in VARIANTS[1:]:
            if name in built:
                variant_path(staged, name).replace(variant_path(out, name))
            else:
                variant_path(out, name).unlink(missing_ok=True)
        staged.replace(out)
    write_json(report_path(out), report)
    return report
