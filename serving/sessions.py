"""ONNX Runtime sessions on the asked device: the CPU, or CUDA (which never silently falls back when asked for).

Plain onnxruntime, no BentoML and never torch; serving/runtime.py chooses which file to open with them.
"""

from __future__ import annotations

from pathlib import Path

import onnxruntime as ort

from serving.settings import check_device


class DeviceError(RuntimeError):
    """The requested execution device cannot be used."""


def _gpu_present() -> bool:
    return Path("/dev/nvidiactl").exists()


def require_file(model_path: Path) -> None:
    if not model_path.exists():
        raise FileNotFoundError(f"{model_path}: no ONNX model here (run `make export`, or set CAPSNET_MODEL)")


def wants_cuda(device: str) -> bool:
    """Whether `device` means trying the CUDA provider; raises SettingsError for an unknown name."""
    check_device(device)
    return device == "cuda" or (device == "auto" and _gpu_present()
                                and "CUDAExecutionProvider" in ort.get_available_providers())


def create_session(model_path: Path, device: str = "auto", threads: int = 0) -> ort.InferenceSession:
    """One ORT session on the asked device; 'cuda' raises DeviceError rather than run on the CPU.

    With 'auto' the session may come back on the CPU provider when CUDA did not start: callers
    check `session.get_providers()[0]`.
    """
    want_cuda = wants_cuda(device)
    require_file(model_path)
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


def on_cuda(session: ort.InferenceSession) -> bool:
    return session.get_providers()[0] == "CUDAExecutionProvider"


def read_metadata(model_path: Path) -> dict[str, str]:
    """The ONNX file's metadata_props, read through a session that optimizes nothing."""
    require_file(model_path)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(str(model_path), options, providers=["CPUExecutionProvider"])
    return dict(session.get_modelmeta().custom_metadata_map)
