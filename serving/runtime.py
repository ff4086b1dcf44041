"""ONNX Runtime inference for the exported CapsNet: session, device choice, input checks.

Plain Python (numpy + onnxruntime), no BentoML and never torch, so it is testable on its own and
the Bento stays small. Environment:
    CAPSNET_MODEL    path of the fp32 ONNX file     (default artifacts/capsnet.onnx)
    CAPSNET_DEVICE   auto | cpu | cuda              (default auto; cuda never falls back silently)
    CAPSNET_VARIANT  auto | fp32 | int8 | fp16      (default auto: int8 on the CPU, fp16 on CUDA, each only
                     if `make export` measured it within its accuracy bar, else fp32)
    CAPSNET_THREADS  ORT intra-op threads, 0 = ORT's choice (default 0)

The variants live beside the fp32 file: artifacts/capsnet-int8.onnx, artifacts/capsnet-fp16.onnx.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

DEFAULT_MODEL = Path("artifacts/capsnet.onnx")
DEVICES = ("auto", "cpu", "cuda")
VARIANTS = ("fp32", "int8", "fp16")
PREFERRED_VARIANT = {"cpu": "int8", "cuda": "fp16"}
MAX_BATCH = 256  # images per request
IMAGE_SIZE = 28
INPUT = "image"
OUTPUTS = ("lengths", "poses", "reconstruction")


class InvalidInput(ValueError):
    """The request's images are malformed; the message says how (HTTP 400)."""


class TooLarge(InvalidInput):
    """The request is over a size limit (HTTP 413)."""


class DeviceError(RuntimeError):
    """The requested execution device cannot be used."""


def _env(name: str, default: str) -> str:
    return os.environ.get(name, "").strip() or default


def _gpu_present() -> bool:
    return Path("/dev/nvidiactl").exists()


def variant_path(fp32_path: Path | str, variant: str) -> Path:
    """artifacts/capsnet.onnx -> artifacts/capsnet-int8.onnx; the fp32 variant is the file itself."""
    fp32_path = Path(fp32_path)
    return fp32_path if variant == "fp32" else fp32_path.with_name(f"{fp32_path.stem}-{variant}{fp32_path.suffix}")


def wants_cuda(device: str) -> bool:
    """Whether `device` means the CUDA provider; raises DeviceError for an unknown name."""
    if device not in DEVICES:
        raise DeviceError(f"CAPSNET_DEVICE={device!r}: expected one of {', '.join(DEVICES)}")
    return device == "cuda" or (device == "auto" and _gpu_present()
                                and "CUDAExecutionProvider" in ort.get_available_providers())


def create_session(model_path: Path, device: str = "auto", threads: int = 0) -> ort.InferenceSession:
    """One ORT session on the asked device; 'cuda' raises DeviceError rather than run on the CPU."""
    want_cuda = wants_cuda(device)
    if not model_path.exists():
        raise FileNotFoundError(f"{model_path}: no ONNX model here (run `make export`, or set CAPSNET_MODEL)")
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if not want_cuda:
        return ort.InferenceSession(str(model_path), options, providers=["CPUExecutionProvider"])
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        raise DeviceError("CAPSNET_DEVICE=cuda, but this onnxruntime build has no CUDAExecutionProvider"
                          " (install onnxruntime-gpu, and not onnxruntime beside it)")
    if hasattr(ort, "preload_dlls"):
        ort.preload_dlls()  # CUDA and cuDNN from the nvidia-* pip packages, without torch
    session = ort.InferenceSession(str(model_path), options,
                                   providers=["CUDAExecutionProvider", "CPUExecutionProvider"])
    if session.get_providers()[0] != "CUDAExecutionProvider" and device == "cuda":
        raise DeviceError("CAPSNET_DEVICE=cuda, but the CUDA execution provider did not start (no GPU visible,"
                          " or CUDA 13 / cuDNN 9 libraries missing); set CAPSNET_DEVICE=cpu to run on the CPU")
    return session


def open_variant(fp32_path: Path, variant: str = "auto", device: str = "auto", threads: int = 0
                 ) -> tuple[str, Path, ort.InferenceSession]:
    """The session of the asked variant; 'auto' takes the device's preferred variant only when its
    file exists and its metadata says it met its accuracy bar, else fp32. An explicit variant whose
    file is missing raises FileNotFoundError."""
    if variant not in ("auto", *VARIANTS):
        raise ValueError(f"CAPSNET_VARIANT={variant!r}: expected auto or one of {', '.join(VARIANTS)}")
    if variant != "auto":
        path = variant_path(fp32_path, variant)
        if not path.exists():
            raise FileNotFoundError(f"CAPSNET_VARIANT={variant}: {path} does not exist (`make export` writes it)")
        return variant, path, create_session(path, device, threads)
    preferred = PREFERRED_VARIANT["cuda" if wants_cuda(device) else "cpu"]
    path = variant_path(fp32_path, preferred)
    if path.exists():
        session = create_session(path, device, threads)
        if session.get_modelmeta().custom_metadata_map.get("meets_accuracy_bar") == "true":
            return preferred, path, session
        del session
    return "fp32", fp32_path, create_session(fp32_path, device, threads)


def validate_images(images: Any, max_batch: int = MAX_BATCH) -> np.ndarray:
    """A JSON array of N 28x28 (or 1x28x28) images in [0, 1] -> float32 (N, 1, 28, 28); else InvalidInput."""
    if not isinstance(images, list):
        raise InvalidInput(f"'images' must be an array of N images of {IMAGE_SIZE}x{IMAGE_SIZE} numbers,"
                           f" got {type(images).__name__}")
    if not images:
        raise InvalidInput("'images' is empty: send at least one image")
    if len(images) > max_batch:
        raise TooLarge(f"'images' holds {len(images)} images; at most {max_batch} per request")
    try:
        array = np.array(images)
    except (ValueError, TypeError):
        raise InvalidInput("'images' is ragged: every image must be 28 rows of 28 numbers") from None
    if array.dtype.kind not in "iuf":
        raise InvalidInput("'images' must hold only numbers (no strings, booleans, nulls or objects)")
    if array.ndim == 4 and array.shape[1] == 1:
        array = array[:, 0]
    if array.shape[1:] != (IMAGE_SIZE, IMAGE_SIZE):
        raise InvalidInput(f"each image must be {IMAGE_SIZE}x{IMAGE_SIZE} (or 1x{IMAGE_SIZE}x{IMAGE_SIZE});"
                           f" got images of shape {list(array.shape[1:])}")
    return check_pixels(array.astype(np.float32))[:, None]


def check_pixels(array: np.ndarray) -> np.ndarray:
    """array itself when every value is finite and in [0, 1]; else InvalidInput."""
    if not np.isfinite(array).all():
        raise InvalidInput("'images' holds NaN or Infinity")
    if array.min() < 0.0 or array.max() > 1.0:
        raise InvalidInput(f"pixel values must lie in [0, 1]; got [{array.min():.4g}, {array.max():.4g}]")
    return array


def parse_octets(body: bytes, max_batch: int = MAX_BATCH) -> np.ndarray:
    """An application/octet-stream body: N x 28 x 28 float32 little-endian in [0, 1] -> (N, 1, 28, 28)."""
    image_bytes = IMAGE_SIZE * IMAGE_SIZE * 4
    if not body or len(body) % image_bytes:
        raise InvalidInput(f"an application/octet-stream body must be N x {IMAGE_SIZE} x {IMAGE_SIZE} float32"
                           f" (a multiple of {image_bytes} bytes); got {len(body)} bytes")
    if len(body) // image_bytes > max_batch:
        raise TooLarge(f"the body holds {len(body) // image_bytes} images; at most {max_batch} per request")
    array = np.frombuffer(body, dtype="<f4").reshape(-1, 1, IMAGE_SIZE, IMAGE_SIZE)
    return check_pixels(array)


@dataclass(frozen=True)
class Prediction:
    labels: np.ndarray  # (N,) int64
    lengths: np.ndarray  # (N, 10) float32
    reconstructions: np.ndarray  # (N, 28, 28) float32

    def classify_answer(self) -> dict[str, list]:
        """The /classify response body."""
        return {"labels": self.labels.tolist(), "lengths": self.lengths.tolist()}


class CapsNetRuntime:
    """The ONNX model behind one session, created once."""

    def __init__(self, model_path: Path | str | None = None, device: str | None = None, threads: int | None = None,
                 variant: str | None = None):
        fp32_path = Path(model_path or _env("CAPSNET_MODEL", str(DEFAULT_MODEL)))
        self.device = device or _env("CAPSNET_DEVICE", "auto")
        threads = int(_env("CAPSNET_THREADS", "0")) if threads is None else threads
        self.variant, self.model_path, self.session = open_variant(
            fp32_path, variant or _env("CAPSNET_VARIANT", "auto"), self.device, threads)
        self.metadata = dict(self.session.get_modelmeta().custom_metadata_map)

    @property
    def providers(self) -> list[str]:
        return self.session.get_providers()

    def predict(self, images: np.ndarray) -> Prediction:
        """images: float32 (N, 1, 28, 28), already validated."""
        lengths, _, reconstruction = self.session.run(list(OUTPUTS), {INPUT: images})
        return Prediction(lengths.argmax(1), lengths, reconstruction[:, 0])

    def describe(self) -> dict[str, Any]:
        meta = self.metadata
        return {
            "model_name": meta.get("model_name", self.model_path.stem),
            "model_file": self.model_path.name,
            "source_sha256": meta.get("source_sha256"),
            "variant": self.variant,
            "test_accuracy": float(meta["test_accuracy_ort"]) if "test_accuracy_ort" in meta else None,
            "accuracy_loss_points": float(meta["accuracy_loss_points"]) if "accuracy_loss_points" in meta else None,
            "opset": int(meta.get("opset", 0)) or None,
            "routing_iterations": int(meta.get("routing_iterations", 0)) or None,
            "config": json.loads(meta["config"]) if "config" in meta else None,
            "device": self.device,
            "providers": self.providers,
            "max_batch": MAX_BATCH,
        }
