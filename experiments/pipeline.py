"""A trained CapsNet through the whole pipeline on its own image size: exported and verified against PyTorch
(`python -m export`'s own function), served by `bentoml serve` from the ONNX file alone (the service reads
the size from the graph), and asked about images of that size through /classify and the Open Inference
Protocol. Used by the bigger-canvas experiments (experiments/affnist.py, experiments/multimnist.py)."""

from __future__ import annotations

import argparse
import json
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import torch

from export.onnx_export import export_and_verify
from loadtest.server import running_service
from training.checkpoint import load_weights
from training.data import DEFAULT_ROOT

VERIFY_DIGITS = 64  # test digits compared with PyTorch at each verified batch size
ACCURACY_DIGITS = 500  # test digits (centred on the canvas) behind the file's test_accuracy_ort
SERVED_IMAGES = 8  # images sent to the running service
BATCH_SECONDS = 0.1  # each batch size timed this long for the file's cpu_best_batch (the merge cap)


def experiment_parser(name: str, description: str, schedules: list[str]) -> argparse.ArgumentParser:
    """The options every experiment takes (python -m experiments.NAME)."""
    p = argparse.ArgumentParser(prog=f"python -m experiments.{name}", description=description,
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--schedule", choices=schedules, default="full",
                   help="full (the GPU step), quick (the CPU proof of the path), smoke (seconds: the dry run)")
    p.add_argument("--seed", type=int, default=0, help="training seed of both models")
    p.add_argument("--runs", type=Path, default=Path(f"runs/{name}"), help="one resumable folder per model")
    p.add_argument("--out", type=Path, default=Path("docs/experiments"),
                   help=f"where {name}[-SCHEDULE].json/.png go (full: {name}.json)")
    p.add_argument("--data", type=Path, default=DEFAULT_ROOT, help="MNIST root folder")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (torch's own choice when not given)")
    p.add_argument("--no-serve", action="store_true", help="skip the export and serving check")
    return p


def figure_title(schedule: str, title: str) -> str:
    """A figure's title; a schedule other than the full one says in capitals that it is not a result."""
    return title if schedule == "full" else f"{schedule.upper()} SCHEDULE, NOT A RESULT: {title}"


def post_json(url: str, body: dict[str, Any]) -> dict[str, Any]:
    request = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as answer:
        return json.loads(answer.read())


def export_serve_answer(checkpoint: Path, onnx_out: Path, images: torch.Tensor, data_root: Path) -> dict[str, Any]:
    """Export checkpoint to onnx_out (verified), serve it, send it `images` (N, 1, S, S); the served lengths against
    PyTorch's on the same images. Raises VerificationError when the export does not match PyTorch."""
    report = export_and_verify(checkpoint, onnx_out, verify_digits=VERIFY_DIGITS, accuracy_digits=ACCURACY_DIGITS,
                               data_root=data_root, variants=(), batch_seconds=BATCH_SECONDS)
    model, _ = load_weights(checkpoint)
    images = images[:SERVED_IMAGES]
    with torch.no_grad():
        expected = model(images)[0].numpy()
    size = images.shape[-1]
    pixels = images.numpy()
    env = {"CAPSNET_MODEL": str(onnx_out), "CAPSNET_DEVICE": "cpu", "CAPSNET_VARIANT": "fp32", "CAPSNET_WORKERS": "1"}
    with running_service(env=env) as service:
        metadata = post_json(service.url + "/metadata", {})
        classify = post_json(service.url + "/classify", {"images": pixels[:, 0].tolist()})
        v2 = post_json(service.url + "/v2/models/capsnet/infer", {
            "inputs": [{"name": "image", "datatype": "FP32", "shape": list(pixels.shape), "data": pixels.ravel().tolist()}],
            "outputs": [{"name": "lengths"}]})
    v2_lengths = np.asarray(v2["outputs"][0]["data"], dtype=np.float32).reshape(len(pixels), -1)
    classify_lengths = np.asarray(classify["lengths"], dtype=np.float32)
    verified = report["onnxruntime"]
    return {
        "onnx": str(onnx_out),
        "export": {"passed": True, "image_size": size, "verified_digits": report["digits"],
                   "max_abs_diff_lengths": max(v["max_abs_diff_lengths"] for v in verified.values()),
                   "max_abs_diff_reconstruction": max(v["max_abs_diff_reconstruction"] for v in verified.values()),
                   "test_accuracy_ort_centred": report["test_accuracy_ort"], "test_digits": report["test_digits"]},
        "served": {"image_size": metadata["image_size"], "variant": metadata["variant"],
                   "images": len(pixels), "classify_labels": classify["labels"],
                   "classify_lengths": classify_lengths.round(4).tolist(),
                   "max_abs_diff_classify_lengths": float(np.abs(classify_lengths - expected).max()),
                   "max_abs_diff_v2_lengths": float(np.abs(v2_lengths - expected).max()),
                   "v2_shape": v2["outputs"][0]["shape"]},
    }
