"""Checkpoint -> one static ONNX graph (routing unrolled, dynamic batch), then verification.

Verification is part of export: the checker (full_check), ONNX Runtime against PyTorch on real
MNIST test digits at several batch sizes, and a second runtime (onnx.reference) on a few digits.
A failed check raises VerificationError, and the CLI exits non-zero.

Two graphs are exported from the same weights: the model (`CapsNet.explain`: the class scores,
poses and reconstruction, and the winner's routing map and type shares, which a caller that does
not fetch them does not pay for with ONNX Runtime's `only_execute_path_to_fetches`), and the
decoder alone (`CapsNet.decode`: one pose of 16 numbers and its class -> the 28x28 image), small
enough for a browser to redraw a digit as its pose changes.
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

from torch import nn

from export.artifact import (DECODER, DECODER_INPUTS, DECODER_OUTPUT, INPUT, OUTPUTS, VARIANTS, cpu_session,
                             ort_accuracy, ort_outputs, set_metadata, variant_path)
from export.batchsize import BATCHES, SECONDS_PER_BATCH, best_batch_metadata
from export.variants import CALIBRATION_DIGITS, build_variants
from training.checkpoint import load_weights, write_json
from mnist import DEFAULT_ROOT, read_split
from timing import describe_cpu
from training.data import MNIST_SIZE, centre
from training.model import CapsNet

DEFAULT_OPSET = 18
# How far ONNX Runtime (and ONNX's reference evaluator) may be from PyTorch on the fp32 graph: about 10x what the
# published weights measured (lengths 3.0e-7, reconstruction 6.7e-6, routing map 6.0e-8; models/*.verify.json)
TOLERANCE = {"lengths": 3e-6, "reconstruction": 1e-4, "routing_map": 1e-6}
DECODER_TOLERANCE = 1e-5  # the decoder alone against PyTorch's: 1.5e-6 measured on the published weights
VERIFY_BATCH_SIZES = (1, 7, 256)
# The variants' scores are held to accuracy bars (export/variants.py), their routing maps to these; measured on the
# published weights: fp16 within 9.3e-6 of PyTorch, int8 within 1.6e-3 (its lengths: 0.067)
VARIANT_ROUTING_TOLERANCE = {"fp16": 1e-4, "int8": 1e-2}
DECODER_VERIFY_DIGITS = 256


def on_canvas(images: np.ndarray, size: int) -> np.ndarray:
    """MNIST digits (N, 1, 28, 28) centred on a size x size canvas (themselves at 28)."""
    return centre(torch.from_numpy(images), size).numpy()


class Explained(nn.Module):
    """The exported model: CapsNet.explain as forward."""

    def __init__(self, model: CapsNet):
        super().__init__()
        self.model = model

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return self.model.explain(image)


class PoseDecoder(nn.Module):
    """The exported decoder: CapsNet.decode as forward."""

    def __init__(self, model: CapsNet):
        super().__init__()
        self.model = model

    def forward(self, pose: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        return self.model.decode(pose, label)


class VerificationError(RuntimeError):
    """The exported graph does not match PyTorch within the tolerances."""


def report_path(onnx_path: Path | str) -> Path:
    return Path(onnx_path).with_suffix(".verify.json")


def _save(module: nn.Module, example: tuple[torch.Tensor, ...], input_names: list[str], output_names: list[str],
          out: Path, opset: int) -> Path:
    """module as one self-contained ONNX file, every input's first axis a dynamic batch."""
    out.parent.mkdir(parents=True, exist_ok=True)
    batch = torch.export.Dim("batch", min=1, max=65536)
    program = torch.onnx.export(
        module, example, input_names=input_names, output_names=output_names, opset_version=opset, dynamo=True,
        external_data=False, dynamic_shapes=tuple({0: batch} for _ in example), optimize=True,
    )
    tmp = out.with_name(out.name + ".tmp")
    program.save(str(tmp), external_data=False)
    tmp.replace(out)
    return out


def export_onnx(model: CapsNet, out: Path | str, opset: int = DEFAULT_OPSET) -> Path:
    """Write model (eval mode, decoder on the longest capsule, routing summary) as one self-contained ONNX file."""
    model = model.eval().cpu()
    example = (torch.rand(2, 1, model.cfg.image_size, model.cfg.image_size),)
    return _save(Explained(model).eval(), example, [INPUT], list(OUTPUTS), Path(out), opset)


def export_decoder(model: CapsNet, out: Path | str, opset: int = DEFAULT_OPSET) -> Path:
    """Write the decoder alone: pose (N, 16) float32 and label (N,) int64 -> reconstruction (N, 1, 28, 28)."""
    model = model.eval().cpu()
    example = (torch.rand(2, model.cfg.digit_dim) - 0.5, torch.tensor([3, 7]))
    return _save(PoseDecoder(model).eval(), example, list(DECODER_INPUTS), [DECODER_OUTPUT], Path(out), opset)


@torch.no_grad()
def torch_outputs(model: CapsNet, images: np.ndarray, batch_size: int = 256) -> dict[str, np.ndarray]:
    parts = [model.explain(torch.from_numpy(images[i:i + batch_size])) for i in range(0, len(images), batch_size)]
    return {name: torch.cat([p[k] for p in parts]).numpy() for k, name in enumerate(OUTPUTS)}


def compare(reference: dict[str, np.ndarray], candidate: dict[str, np.ndarray]) -> dict[str, float]:
    """Largest differences per output, and the share of digits with the same label. The routing outputs are
    compared on the digits whose labels agree (they belong to the winner, which is another class elsewhere)."""
    same = reference["lengths"].argmax(1) == candidate["lengths"].argmax(1)
    diffs = {f"max_abs_diff_{name}": float(np.abs(reference[name] - candidate[name]).max()) for name in OUTPUTS[:3]}
    for name in OUTPUTS[3:]:
        diffs[f"max_abs_diff_{name}"] = float(np.abs(reference[name][same] - candidate[name][same]).max(initial=0.0))
    return {**diffs, "argmax_agreement": float(same.mean())}


def check(name: str, diffs: dict[str, float]) -> list[str]:
    failures = [f"{name}: max |d {output}| {diffs[f'max_abs_diff_{output}']:.2e} > {limit}"
                for output, limit in TOLERANCE.items() if diffs[f"max_abs_diff_{output}"] > limit]
    if diffs["argmax_agreement"] < 1.0:
        failures.append(f"{name}: argmax agreement {diffs['argmax_agreement']:.4%} < 100%")
    return failures


def verify(onnx_path: Path | str, model: CapsNet, images: np.ndarray, labels: np.ndarray, reference_digits: int = 2,
           expected: dict[str, np.ndarray] | None = None
           ) -> dict[str, Any]:
    """All checks on onnx_path; returns the report, raises VerificationError if any check fails."""
    onnx_path = Path(onnx_path)
    onnx.checker.check_model(str(onnx_path), full_check=True)
    expected = torch_outputs(model, images) if expected is None else expected  # PyTorch's outputs on images
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


@torch.no_grad()
def verify_decoder(decoder_path: Path | str, model: CapsNet, images: np.ndarray) -> dict[str, Any]:
    """The decoder graph against CapsNet.decode on the winners' poses of real digits, and on the same poses
    moved by up to +-0.25 (what the page's sliders do); raises VerificationError past the tolerance."""
    onnx.checker.check_model(str(decoder_path), full_check=True)
    lengths, poses, _ = model(torch.from_numpy(images))
    labels = lengths.argmax(1)
    pose = poses[torch.arange(len(labels)), labels]
    moved = pose + 0.5 * (torch.rand(pose.shape, generator=torch.Generator().manual_seed(0)) - 0.5)
    session = cpu_session(decoder_path)
    report: dict[str, Any] = {"digits": len(images), "tolerance": DECODER_TOLERANCE}
    for name, p in (("winner_poses", pose), ("moved_poses", moved)):
        got = session.run([DECODER_OUTPUT], dict(zip(DECODER_INPUTS, (p.numpy(), labels.numpy()))))[0]
        report[f"max_abs_diff_{name}"] = float(np.abs(model.decode(p, labels).numpy() - got).max())
    failures = [f"decoder on {name}: max |d reconstruction| {report[f'max_abs_diff_{name}']:.2e}"
                f" > {DECODER_TOLERANCE}" for name in ("winner_poses", "moved_poses")
                if report[f"max_abs_diff_{name}"] > DECODER_TOLERANCE]
    if failures:
        raise VerificationError("; ".join(failures))
    return report


def export_and_verify(checkpoint: Path | str, out: Path | str, opset: int = DEFAULT_OPSET, verify_digits: int = 1000,
                      accuracy_digits: int | None = None, data_root: Path | str = DEFAULT_ROOT,
                      variants: tuple[str, ...] = (), batch_seconds: float = SECONDS_PER_BATCH) -> dict[str, Any]:
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
    size = model.cfg.image_size  # a model for a bigger canvas is verified on the test digits centred on it
    images, labels = read_split("test", data_root, accuracy_digits)
    images = on_canvas(images[:, None], size)
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=".export-") as folder:
        staged = Path(folder) / out.name
        export_onnx(model, staged, opset)
        expected = torch_outputs(model, images[:verify_digits])  # once: for the graph and for its variants
        report = verify(staged, model, images[:verify_digits], labels[:verify_digits], expected=expected)
        staged_decoder = export_decoder(model, variant_path(staged, DECODER), opset)
        report["decoder"] = verify_decoder(staged_decoder, model, images[:DECODER_VERIFY_DIGITS])
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
            **({"test_set": f"MNIST test digits centred on {size}x{size}"} if size != MNIST_SIZE else {}),
            "variant": "fp32",
            **best_batch_metadata(staged, images[:max(BATCHES)], batch_seconds),
        }
        set_metadata(staged, metadata)
        calibration = on_canvas(read_split("train", data_root, CALIBRATION_DIGITS)[0][:, None], size) if variants else None
        built = build_variants(staged, list(variants), calibration, images, labels, metadata, batch_seconds)
        for name, variant in built.items():
            diffs = compare(expected, ort_outputs(cpu_session(variant_path(staged, name)), images[:verify_digits], 256))
            variant["against_torch"] = {**diffs, "routing_map_tolerance": VARIANT_ROUTING_TOLERANCE[name]}
            if diffs["max_abs_diff_routing_map"] > VARIANT_ROUTING_TOLERANCE[name]:
                raise VerificationError(f"{name} variant: max |d routing_map| {diffs['max_abs_diff_routing_map']:.2e}"
                                        f" > {VARIANT_ROUTING_TOLERANCE[name]}")
        # the fp32 file names its variants and its decoder: the service finds them through this, not through our code
        set_metadata(staged, {**metadata, "variants": {name: variant_path(out, name).name for name in built},
                              DECODER: variant_path(out, DECODER).name})
        set_metadata(staged_decoder, {**{k: v for k, v in metadata.items() if not k.startswith("cpu_")},
                                      "variant": DECODER})
        report["decoder"]["onnx"] = str(variant_path(out, DECODER))
        for name, variant in built.items():
            variant["onnx"] = str(variant_path(out, name))
        report.update({"onnx": str(out), "cpu": describe_cpu(), "metadata": metadata, "test_accuracy_ort": accuracy,
                       "test_digits": len(images), "variants": built, "seconds": round(time.time() - started, 1)})
        for name in VARIANTS[1:]:
            if name in built:
                variant_path(staged, name).replace(variant_path(out, name))
            else:
                variant_path(out, name).unlink(missing_ok=True)
        staged_decoder.replace(variant_path(out, DECODER))
        staged.replace(out)
    write_json(report_path(out), report)
    return report
