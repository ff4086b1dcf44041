"""The request formats the load tools send (the soak, the peers): where each goes, its body and headers for N
images, and how to read the labels from its answer."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Callable

import numpy as np


@dataclass(frozen=True)
class Form:
    """A request format: where it goes, its body and headers for N images, and how to read labels from its answer."""
    name: str
    path: str
    body: Callable[[np.ndarray], tuple[bytes, dict[str, str]]]
    labels: Callable[[bytes, dict[str, str]], list[int]]


def json_images(images: np.ndarray) -> tuple[bytes, dict[str, str]]:
    return json.dumps({"images": images[:, 0].tolist()}).encode(), {"Content-Type": "application/json"}


def raw_images(images: np.ndarray) -> tuple[bytes, dict[str, str]]:
    return images.astype("<f4").tobytes(), {"Content-Type": "application/octet-stream"}


def v2_json(images: np.ndarray) -> tuple[bytes, dict[str, str]]:
    return json.dumps({"inputs": [{"name": "image", "datatype": "FP32", "shape": list(images.shape),
                                   "data": images.reshape(-1).tolist()}],
                       "outputs": [{"name": "lengths"}]}).encode(), {"Content-Type": "application/json"}


def v2_binary(images: np.ndarray) -> tuple[bytes, dict[str, str]]:
    raw = images.astype("<f4").tobytes()
    header = json.dumps({"inputs": [{"name": "image", "datatype": "FP32", "shape": list(images.shape),
                                     "parameters": {"binary_data_size": len(raw)}}],
                         "outputs": [{"name": "lengths", "parameters": {"binary_data": True}}]}).encode()
    return header + raw, {"Content-Type": "application/octet-stream", "Inference-Header-Content-Length": str(len(header))}


def labels_field(answer: bytes, _: dict[str, str]) -> list[int]:
    return json.loads(answer)["labels"]


def labels_of_lengths(answer: bytes, _: dict[str, str]) -> list[int]:
    return np.asarray(json.loads(answer)).argmax(1).tolist()


def labels_v2(answer: bytes, headers: dict[str, str]) -> list[int]:
    size = headers.get("inference-header-content-length")
    head = json.loads(answer[:int(size)] if size else answer)
    out = head["outputs"][0]
    if size:
        lengths = np.frombuffer(answer[int(size):int(size) + out["parameters"]["binary_data_size"]], "<f4")
    else:
        lengths = np.asarray(out["data"], np.float32)
    return lengths.reshape(out["shape"]).argmax(1).tolist()


V2_PATH = "/v2/models/capsnet/infer"
FORMS = {
    "classify-json": Form("/classify, JSON", "/classify", json_images, labels_field),
    "classify-raw": Form("/classify, raw float32", "/classify", raw_images, labels_field),
    "v2-json": Form("v2, JSON tensors", V2_PATH, v2_json, labels_v2),
    "v2-binary": Form("v2, binary tensors", V2_PATH, v2_binary, labels_v2),
    "litserve-json": Form("/predict, JSON", "/predict", json_images, labels_field),
    "bentoml-json": Form("/classify, JSON (numpy)", "/classify", json_images, labels_of_lengths),
}
