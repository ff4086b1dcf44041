"""What every peer server shares: its command line, and one ONNX Runtime session of the int8 file (one thread)."""

from __future__ import annotations

import argparse
import socket

import numpy as np
import onnxruntime as ort

INPUT, OUTPUT = "image", "lengths"
MAX_BATCH = 256  # the service's per-request cap: every batching peer may merge up to this many images


def arguments(description: str) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=description, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model", required=True, help="the ONNX file to serve (the int8 variant)")
    p.add_argument("--port", type=int, required=True, help="HTTP port on 127.0.0.1")
    p.add_argument("--grpc-port", type=int, default=0, help="gRPC port on 127.0.0.1, where the peer speaks gRPC (0: any free one)")
    p.add_argument("--threads", type=int, default=1, help="ONNX Runtime intra-op threads")
    return p.parse_args()


def free_port() -> int:
    """A loopback port no one listens on now (for a peer's second and third listeners)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def session(model: str, threads: int) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])


def lengths(sess: ort.InferenceSession, images: np.ndarray) -> np.ndarray:
    """(N, 1, 28, 28) float32 -> (N, 10) capsule lengths."""
    return sess.run([OUTPUT], {INPUT: images})[0]


def images_from_json(data: dict) -> np.ndarray:
    return np.asarray(data["images"], dtype=np.float32).reshape(-1, 1, 28, 28)


def images_from_octets(body: bytes) -> np.ndarray:
    return np.frombuffer(body, dtype="<f4").reshape(-1, 1, 28, 28)


def split(batched: np.ndarray, sizes: list[int]) -> list[np.ndarray]:
    """A batch's rows handed back to the requests it merged, by their sizes."""
    return np.split(batched, np.cumsum(sizes)[:-1])
