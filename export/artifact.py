"""What an exported artifact is: the graph's input and output names, the variant files' names,
the metadata stored in each file, and how to run one through ONNX Runtime.

Export owns these names. The service does not import them: it reads the input name from the
session, checks the outputs it needs at start-up, and finds the variants through the fp32 file's
`variants` metadata (see docs/ARCHITECTURE.md, "The artifacts").
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort

INPUT = "image"  # float32 (N, 1, 28, 28) in [0, 1]
OUTPUTS = ("lengths", "poses", "reconstruction",  # (N, 10), (N, 10, 16), (N, 1, 28, 28)
           "routing_map", "routing_types")  # (N, 6, 6), (N, 32): the winner's last coupling coefficients
CLASSIFY_OUTPUTS = ("lengths", "reconstruction")  # what the service's /classify fetches
VARIANTS = ("fp32", "int8", "fp16")  # fp32 is the exported graph itself
DECODER = "decoder"  # capsnet-decoder.onnx beside the fp32 file: pose (N, 16) + label (N,) -> (N, 1, 28, 28)
DECODER_INPUTS, DECODER_OUTPUT = ("pose", "label"), "reconstruction"


def variant_path(fp32_path: Path | str, variant: str) -> Path:
    """artifacts/capsnet.onnx -> artifacts/capsnet-int8.onnx (or -decoder.onnx); the fp32 variant is the file itself."""
    fp32_path = Path(fp32_path)
    return fp32_path if variant == "fp32" else fp32_path.with_name(f"{fp32_path.stem}-{variant}{fp32_path.suffix}")


def set_metadata(onnx_path: Path | str, metadata: dict[str, Any]) -> None:
    """Store metadata as the model's metadata_props (strings; dicts as JSON)."""
    proto = onnx.load(str(onnx_path))
    del proto.metadata_props[:]
    for key, value in metadata.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value if isinstance(value, str) else json.dumps(value)
    onnx.save(proto, str(onnx_path))


def cpu_session(onnx_path: Path | str) -> ort.InferenceSession:
    return ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])


def ort_outputs(session: ort.InferenceSession, images: np.ndarray, batch_size: int) -> dict[str, np.ndarray]:
    """Every output of the graph on images (N, 1, 28, 28), run batch_size images at a time."""
    parts = [session.run(list(OUTPUTS), {INPUT: images[i:i + batch_size]}) for i in range(0, len(images), batch_size)]
    return {name: np.concatenate([p[k] for p in parts]) for k, name in enumerate(OUTPUTS)}


def ort_accuracy(session: ort.InferenceSession, images: np.ndarray, labels: np.ndarray, batch_size: int = 256
                 ) -> float:
    """Top-1 accuracy by the longest capsule."""
    lengths = np.concatenate([session.run([OUTPUTS[0]], {INPUT: images[i:i + batch_size]})[0]
                              for i in range(0, len(images), batch_size)])
    return float((lengths.argmax(1) == labels).mean())


def reference_lengths(onnx_path: Path | str, images: np.ndarray) -> np.ndarray:
    """The lengths the graph means, by onnx.reference (the spec's own evaluator), one image at a time. The
    evaluator has no DequantizeLinear for opset 18, so the graph is read as opset 21, where DequantizeLinear,
    QuantizeLinear and every other op in these graphs mean the same for these inputs."""
    from onnx.reference import ReferenceEvaluator

    graph = onnx.load(str(onnx_path))
    for opset in graph.opset_import:
        if opset.domain in ("", "ai.onnx"):
            opset.version = 21
    evaluator = ReferenceEvaluator(graph)
    return np.concatenate([evaluator.run([OUTPUTS[0]], {INPUT: images[i:i + 1]})[0] for i in range(len(images))])
