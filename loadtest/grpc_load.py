"""The Open Inference Protocol's ModelInfer over gRPC, loaded by h2load (nghttp2's compiled HTTP/2 client, Debian's
nghttp2-client): a gRPC call is an HTTP/2 POST of one length-prefixed protobuf message, which h2load sends as a body
file, as fast as a compiled client does, from its own core.

h2load counts HTTP statuses, and gRPC answers its errors with status 200 and a grpc-status trailer: so a call is
counted a success only through the bytes it got back. Every good answer is one message of the same size (checked
on a real call first); a call that failed has no message. The answers' data bytes must be exactly `done` times
that size, else the difference is reported as errors.

    from loadtest.grpc_load import infer_body, call, h2load
"""

from __future__ import annotations

import re
import shutil
import struct
import subprocess
import tempfile
from pathlib import Path

import grpc
import numpy as np

from loadtest.server import children_cpu_seconds
from serving.v2_proto import MESSAGES, SERVICE

METHOD = f"/{SERVICE}/ModelInfer"
HEADERS = ("content-type: application/grpc", "te: trailers")


def frame(message: bytes) -> bytes:
    """gRPC's length-prefixed message: not compressed (0), its length (4 bytes, big-endian), the message."""
    return struct.pack(">BI", 0, len(message)) + message


def infer_body(images: np.ndarray, model: str = "capsnet") -> bytes:
    """A ModelInferRequest for `images` (N, 1, H, W) float32, as raw contents, asking for the lengths."""
    request = MESSAGES["ModelInferRequest"](model_name=model)
    tensor = request.inputs.add(name="image", datatype="FP32", shape=list(images.shape))
    del tensor  # its data travels in raw_input_contents
    request.outputs.add(name="lengths")
    request.raw_input_contents.append(np.ascontiguousarray(images, "<f4").tobytes())
    return request.SerializeToString()


def call(target: str, body: bytes, timeout: float = 30) -> tuple[np.ndarray, int]:
    """One ModelInfer over a real gRPC channel: the lengths it answered, and its answer's framed size in bytes."""
    with grpc.insecure_channel(target) as channel:
        answer = channel.unary_unary(METHOD)(body, timeout=timeout)  # bytes in, bytes out
    response = MESSAGES["ModelInferResponse"].FromString(answer)
    out = response.outputs[0]
    data = (np.frombuffer(response.raw_output_contents[0], "<f4") if response.raw_output_contents
            else np.asarray(out.contents.fp32_contents, np.float32))
    return data.reshape(list(out.shape)), len(frame(answer))


def percentiles_of(log: Path) -> dict[str, float]:
    """p50/p90/p95/p99 in ms from h2load's --log-file (start µs, status, duration µs per request)."""
    durations = np.sort([int(line.split("\t")[2]) for line in log.read_text().splitlines() if line.strip()])
    if not len(durations):
        return {f"p{q}_ms": 0.0 for q in (50, 90, 95, 99)}
    return {f"p{q}_ms": round(float(np.percentile(durations, q)) / 1000, 2) for q in (50, 90, 95, 99)}


def h2load(target: str, body: bytes, answer_bytes: int, client_cores: set[int], connections: int,
           seconds: float) -> dict:
    """h2load's ModelInfer calls to `target` (host:port) for `seconds`, `connections` connections of one stream
    each, pinned to `client_cores`; the same keys as loadtest.pinned.wrk's result (non_2xx: failed calls)."""
    if shutil.which("h2load") is None:
        raise SystemExit("h2load is missing: apt-get install nghttp2-client (make tools)")
    with tempfile.TemporaryDirectory() as tmp:
        body_file, log = Path(tmp) / "body", Path(tmp) / "log.tsv"
        body_file.write_bytes(frame(body))
        headers = [arg for header in HEADERS for arg in ("-H", header)]
        cpu_before = children_cpu_seconds()
        run = subprocess.run(["taskset", "-c", ",".join(map(str, sorted(client_cores))), "h2load", "-t1",
                              f"-c{connections}", "-m1", f"-D{max(1, round(seconds))}", "-d", str(body_file),
                              *headers, "--log-file", str(log), f"http://{target}{METHOD}"],
                             capture_output=True, text=True, timeout=seconds + 60)
        if run.returncode != 0:
            raise RuntimeError(f"h2load failed (exit {run.returncode}): {run.stderr.strip()} {run.stdout[-500:]}")
        out, client_cpu = run.stdout, children_cpu_seconds() - cpu_before
        done = int(re.search(r"requests: \d+ total, \d+ started, (\d+) done", out).group(1))
        data = int(re.search(r"traffic: .*\((\d+)\) data", out).group(1))  # the answers' DATA frames, in bytes
        answered = data // answer_bytes if answer_bytes else 0
        return {"requests": done, "requests_per_s": float(re.search(r"finished in [\d.]+s, ([\d.]+) req/s", out).group(1)),
                **percentiles_of(log), "non_2xx": done - answered if data == answered * answer_bytes else done,
                "client_cpu_s": round(client_cpu, 2)}
