"""ONNX Runtime inference for the exported CapsNet: the graph check, the variant choice, predict and explain.

Plain Python (numpy + onnxruntime), no BentoML and never torch, so it is testable on its own and
the Bento stays small. It imports nothing from export/: the ONNX file is the contract. The input
name comes from the session, the outputs it needs are checked at start-up, and the variants are
the files that the fp32 graph's `variants` metadata names. Which file, device and variant to serve
come from the caller (the service reads them once, serving/settings.py); the sessions on that device from
serving/sessions.py.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from serving.limits import IMAGE_SIZE, MAX_BATCH
from serving.sessions import create_session, on_cuda, read_metadata, wants_cuda
from serving.settings import check_variant

PREFERRED_VARIANT = {"cpu": "int8", "cuda": "fp16"}
# the outputs the service reads, checked at start-up
LENGTHS, POSES, RECONSTRUCTION, ROUTING_MAP, ROUTING_TYPES = (
    "lengths", "poses", "reconstruction", "routing_map", "routing_types")
NEEDED_OUTPUTS = {LENGTHS, POSES, RECONSTRUCTION, ROUTING_MAP, ROUTING_TYPES}

log = logging.getLogger("capsnet")


class ModelError(RuntimeError):
    """The ONNX file is not the graph this service can serve."""


def check_graph(session: ort.InferenceSession, model_path: Path) -> tuple[str, int]:
    """The graph's input name and image size S, once its input ([N, 1, S, S] float) and outputs are what the
    service needs; else ModelError. S is the graph's own (28 for MNIST; 40 or 36 on the bigger canvases)."""
    inputs = session.get_inputs()
    outputs = {o.name for o in session.get_outputs()}
    shape = inputs[0].shape[1:] if len(inputs) == 1 else None
    square = (shape is not None and len(shape) == 3 and shape[0] == 1 and isinstance(shape[1], int)
              and shape[1] == shape[2] and shape[1] > 0)
    if not square or inputs[0].type != "tensor(float)":
        found = [(i.name, i.type, i.shape) for i in inputs]
        raise ModelError(f"{model_path}: expected one float input of shape [N, 1, S, S] (S = {IMAGE_SIZE} for MNIST),"
                         f" found {found}")
    if missing := NEEDED_OUTPUTS - outputs:
        raise ModelError(f"{model_path}: the graph has no output {', '.join(sorted(missing))}"
                         f" (outputs: {', '.join(sorted(outputs))}); was it made by `python -m export`?")
    return inputs[0].name, shape[1]


@dataclass
class Choice:
    """The session the service runs, and why it is that one."""
    variant: str
    path: Path
    session: ort.InferenceSession
    warnings: list[str] = field(default_factory=list)
    fp32_metadata: dict[str, str] = field(default_factory=dict)  # the fp32 file's: names its variants and decoder


def _listed_variants(fp32_path: Path, meta: dict[str, str]) -> dict[str, Path]:
    return {name: fp32_path.with_name(file) for name, file in json.loads(meta.get("variants", "{}")).items()}


def variant_files(fp32_path: Path, fp32_metadata: dict[str, str]) -> dict[str, Path]:
    """fp32 and each variant its metadata names whose file exists: {variant: path}."""
    listed = _listed_variants(fp32_path, fp32_metadata)
    return {"fp32": fp32_path, **{name: path for name, path in listed.items() if path.exists()}}


def open_variant(fp32_path: Path, variant: str = "auto", device: str = "auto", threads: int = 0) -> Choice:
    """The session of the asked variant.

    'auto' takes the device's preferred variant only when the fp32 file names it, its file exists,
    it was made from the same weights (source_sha256) and its metadata says it met its accuracy bar;
    otherwise fp32, with the reason in `warnings`. With device 'auto', CUDA that is listed but does
    not start means the CPU and the CPU's variant, also said in `warnings`. An explicit variant
    that is missing or made from other weights raises FileNotFoundError or ModelError.
    """
    check_variant(variant)
    fp32_meta = read_metadata(fp32_path)
    listed = _listed_variants(fp32_path, fp32_meta)
    warnings: list[str] = []
    cuda = wants_cuda(device)
    name = variant if variant != "auto" else PREFERRED_VARIANT["cuda" if cuda else "cpu"]
    path = fp32_path if name == "fp32" else listed.get(name)
    if variant != "auto" and name != "fp32" and (path is None or not path.exists()):
        raise FileNotFoundError(f"CAPSNET_VARIANT={name}: {fp32_path} names no existing {name} variant"
                                f" (its variants: {sorted(listed) or 'none'}; `make export` writes them)")
    if path is None or not path.exists():
        warnings.append(f"no {name} variant beside {fp32_path.name} (`make export` writes it); serving fp32")
        name, path = "fp32", fp32_path
    session = create_session(path, device, threads)
    if cuda and device == "auto" and not on_cuda(session):
        warnings.append("CAPSNET_DEVICE=auto: the CUDA provider is listed but did not start; serving on the CPU")
        return _finish(open_variant(fp32_path, variant, "cpu", threads), warnings)
    if name != "fp32":
        meta = dict(session.get_modelmeta().custom_metadata_map)
        reason = None
        if meta.get("source_sha256") != fp32_meta.get("source_sha256"):
            reason = (f"{path.name} was made from other weights (source_sha256 {str(meta.get('source_sha256'))[:12]}"
                      f" vs {str(fp32_meta.get('source_sha256'))[:12]} of {fp32_path.name}): a stale variant")
            if variant != "auto":
                raise ModelError(f"CAPSNET_VARIANT={name}: {reason}; run `make export` again")
        elif variant == "auto" and meta.get("meets_accuracy_bar") != "true":
            reason = f"{path.name} missed its accuracy bar"
        if reason:
            warnings.append(f"{reason}; serving fp32")
            del session
            name, path, session = "fp32", fp32_path, create_session(fp32_path, device, threads)
    return _finish(Choice(name, path, session, fp32_metadata=fp32_meta), warnings)


def _finish(choice: Choice, warnings: list[str]) -> Choice:
    choice.warnings = warnings + choice.warnings
    for warning in warnings:
        log.warning(warning)
    return choice


@dataclass(frozen=True)
class Prediction:
    labels: np.ndarray  # (N,) int64
    lengths: np.ndarray  # (N, 10) float32
    reconstructions: np.ndarray  # (N, S, S) float32, S the graph's image size


@dataclass(frozen=True)
class Explanation:
    """A prediction and what it rests on: the winning capsule's pose and its last routing."""
    labels: np.ndarray  # (N,) int64
    lengths: np.ndarray  # (N, 10)
    poses: np.ndarray  # (N, 16): the winning capsule's
    reconstructions: np.ndarray  # (N, S, S)
    routing_maps: np.ndarray  # (N, G, G), G = 6 at 28x28: share of each position's 32 primary capsules' votes that went to the winner
    routing_types: np.ndarray  # (N, 32): the same share per capsule type, over the 36 positions


class CapsNetRuntime:
    """The ONNX model behind one session, created once."""

    def __init__(self, model_path: Path | str, device: str = "auto", threads: int = 0, variant: str = "auto"):
        fp32_path = Path(model_path)
        self.device, self.threads = device, threads
        choice = open_variant(fp32_path, variant, device, threads)
        self.variant, self.model_path, self.session, self.warnings = (choice.variant, choice.path, choice.session,
                                                                      choice.warnings)
        self.input_name, self.image_size = check_graph(self.session, self.model_path)  # the image size: the graph's
        self.routing_grid = next(o.shape[1] for o in self.session.get_outputs() if o.name == ROUTING_MAP)
        self.metadata = dict(self.session.get_modelmeta().custom_metadata_map)
        self.file_sha256 = hashlib.sha256(self.model_path.read_bytes()).hexdigest()  # of the file served, once
        # merged batches stop at the size the served file ran fastest at on the CPU when exported (a request
        # may still bring up to MAX_BATCH images); on CUDA, not measured: MAX_BATCH
        measured = self.metadata.get("cpu_best_batch")
        self.merge_cap = int(measured) if measured and not on_cuda(self.session) else MAX_BATCH
        self.variant_files = variant_files(fp32_path, choice.fp32_metadata)  # the versions the v2 protocol names
        decoder = choice.fp32_metadata.get("decoder")  # the page's live pose sliders run this one in the browser
        self.decoder_path = fp32_path.with_name(decoder) if decoder else None

    @property
    def providers(self) -> list[str]:
        return self.session.get_providers()

    def predict(self, images: np.ndarray) -> Prediction:
        """images: float32 (N, 1, S, S), already validated."""
        # the graph also computes the routing summary, which costs nothing measurable (docs/history.md); ONNX Runtime's only_execute_path_to_fetches, which would skip it, measured no faster
        lengths, reconstruction = self.session.run([LENGTHS, RECONSTRUCTION], {self.input_name: images})
        return Prediction(lengths.argmax(1), lengths, reconstruction[:, 0])

    def run(self, outputs: list[str], images: np.ndarray) -> list[np.ndarray]:
        """The named outputs of the graph for images (float32 (N, 1, S, S), already validated)."""
        return self.session.run(outputs, {self.input_name: images})

    def explain(self, images: np.ndarray) -> Explanation:
        """images: float32 (N, 1, S, S), already validated."""
        lengths, poses, reconstruction, routing_map, routing_types = self.session.run(
            [LENGTHS, POSES, RECONSTRUCTION, ROUTING_MAP, ROUTING_TYPES], {self.input_name: images})
        labels = lengths.argmax(1)
        return Explanation(labels, lengths, poses[np.arange(len(labels)), labels], reconstruction[:, 0], routing_map,
                           routing_types)

    def describe(self) -> dict[str, Any]:
        """What is served: the model, its file and variant, the device and providers, and why (warnings)."""
        meta = self.metadata
        return {
            "model_name": meta.get("model_name", self.model_path.stem),
            "model_file": self.model_path.name,
            "file_sha256": self.file_sha256,
            "source_sha256": meta.get("source_sha256"),
            "variant": self.variant,
            "test_accuracy": float(meta["test_accuracy_ort"]) if "test_accuracy_ort" in meta else None,
            "accuracy_loss_points": float(meta["accuracy_loss_points"]) if "accuracy_loss_points" in meta else None,
            "opset": int(meta.get("opset", 0)) or None,
            "routing_iterations": int(meta.get("routing_iterations", 0)) or None,
            "config": json.loads(meta["config"]) if "config" in meta else None,
            "image_size": self.image_size,
            "device": self.device,
            "providers": self.providers,
            "merge_cap": self.merge_cap,
            "threads_per_worker": self.threads,
            "decoder_file": self.decoder_path.name if self.decoder_path else None,
            "warnings": self.warnings,
        }
