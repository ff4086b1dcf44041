"""The Open Inference Protocol (KServe's and Triton's "v2" HTTP/REST protocol) on the service's own port.

    GET  /v2/health/live, /v2/health/ready                      200, or 503 while the worker drains
    GET  /v2                                                    server metadata, its one extension
    GET  /v2/models/capsnet[/versions/V]                        model metadata, read from the ONNX file
    GET  /v2/models/capsnet[/versions/V]/ready                  200, or 503 while the worker drains
    POST /v2/models/capsnet[/versions/V]/infer                  inference: JSON tensors, or the binary
                                                                tensor data extension

The versions are what the export wrote and the service checks: fp32, int8, fp16 (those whose files
exist). Without a version, and with the version the service runs (int8 on the CPU, fp16 on CUDA), a
request asking only for `lengths` and `reconstruction` goes through the worker's batcher, merged with
/classify's requests; any other output or version runs its own session (created once, on first use)
in a thread. The input is the graph's, `image`: FP32 [N, 1, S, S] (S = 28 for MNIST, the graph's own size)
in [0, 1], N <= 256, as JSON
`data` (flat or nested) or as binary data; outputs are chosen by name, each as JSON or as binary data.

Errors are `{"error": "..."}`: 404 for an unknown model or version, 400 for a request that is not
what the protocol and the model take (413 over the size limits, 503 when overloaded).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import numpy as np
import orjson
from starlette.requests import Request
from starlette.responses import Response

from serving.batching import Batcher
from serving.errors import JSON_TYPE, InvalidInput, NotFound, TooLarge
from serving.limits import MAX_BATCH
from serving.routes import check_pixels
from serving.runtime import CapsNetRuntime, ModelError
from serving.settings import Settings

MODEL = "capsnet"
PLATFORM = "onnxruntime_onnx"
EXTENSIONS = ["binary_tensor_data"]
BATCHED = {"lengths", "reconstruction"}  # what the batcher's runs fetch
HEADER_LENGTH = "inference-header-content-length"

@dataclass
class Tensor:
    """One output to answer: its name, array, and whether it goes as binary data."""
    name: str
    array: np.ndarray
    binary: bool


def split_body(body: bytes, header_length: str | None) -> tuple[dict[str, Any], bytes]:
    """The request's JSON header and what follows it (the binary tensor data extension)."""
    size = len(body)
    if header_length is not None:
        if not (header_length.isascii() and header_length.isdigit()) or int(header_length) > size:  # "¹".isdigit()
            raise InvalidInput(f"Inference-Header-Content-Length {header_length!r}: expected the JSON header's size,"
                               f" a whole number of at most the body's {size} bytes")
        size = int(header_length)
    try:
        header = orjson.loads(body[:size])
    except orjson.JSONDecodeError as err:
        raise InvalidInput(f"the inference request is not JSON: {err}") from None
    if not isinstance(header, dict):
        raise InvalidInput("the inference request must be a JSON object")
    return header, body[size:]


def check_input(name: Any, datatype: Any, shape: Any, input_name: str, size: int) -> list[int]:
    """The one input tensor's name, datatype and shape, checked (over HTTP and gRPC alike): FP32 [N, 1, size, size],
    1 <= N <= MAX_BATCH; its shape."""
    if name != input_name:
        raise InvalidInput(f"unknown input {name!r}; the model's one input is '{input_name}'")
    if datatype != "FP32":
        raise InvalidInput(f"input '{input_name}' has datatype {datatype!r}; the model takes FP32")
    if (not isinstance(shape, list) or len(shape) != 4 or shape[1:] != [1, size, size]
            or not all(type(d) is int for d in shape) or shape[0] < 1):
        raise InvalidInput(f"input '{input_name}' has shape {shape}; the model takes [N, 1, {size}, {size}]"
                           f" with N >= 1")
    if shape[0] > MAX_BATCH:
        raise TooLarge(f"input '{input_name}' holds {shape[0]} images; at most {MAX_BATCH} per request")
    return shape


def read_images(header: dict[str, Any], binary: bytes, input_name: str, size: int) -> np.ndarray:
    """The one input tensor, checked: FP32 [N, 1, size, size] in [0, 1], 1 <= N <= MAX_BATCH."""
    inputs = header.get("inputs")
    if not isinstance(inputs, list) or len(inputs) != 1 or not isinstance(inputs[0], dict):
        raise InvalidInput(f"'inputs' must hold exactly one tensor, '{input_name}'")
    tensor = inputs[0]
    shape = check_input(tensor.get("name"), tensor.get("datatype"), tensor.get("shape"), input_name, size)
    count = shape[0] * size * size
    claimed = (tensor.get("parameters") or {}).get("binary_data_size")
    if claimed is not None:
        if "data" in tensor:
            raise InvalidInput(f"input '{input_name}' has both 'data' and binary_data_size")
        if type(claimed) is not int or claimed != count * 4 or len(binary) != claimed:
            raise InvalidInput(f"input '{input_name}': binary_data_size {claimed!r} and the {len(binary)} bytes after"
                               f" the header must both be {count * 4} (shape {shape}, FP32)")
        array = np.frombuffer(binary, dtype="<f4")
    else:
        if binary:
            raise InvalidInput(f"{len(binary)} bytes follow the JSON header, but no input has binary_data_size")
        try:
            array = np.asarray(tensor.get("data"), dtype=np.float32).reshape(-1)
        except (ValueError, TypeError):
            raise InvalidInput(f"input '{input_name}': 'data' must be numbers, flat or nested by the shape") from None
        if array.size != count:
            raise InvalidInput(f"input '{input_name}': 'data' holds {array.size} numbers; shape {shape} needs {count}")
    return check_pixels(array.reshape(shape))


def parse_infer_body(body: bytes, header_length: str | None, input_name: str, size: int, output_names: list[str]
                     ) -> tuple[dict[str, Any], np.ndarray, list[tuple[str, bool]]]:
    """An inference request over HTTP, read and checked: its JSON header, its images, the outputs it asks for."""
    header, binary = split_body(body, header_length)
    return header, read_images(header, binary, input_name, size), requested_outputs(header, output_names)


def check_output(name: Any, names: list[str]) -> str:
    if name not in names:
        raise InvalidInput(f"unknown output {name!r}; the model's outputs: {', '.join(names)}")
    return name


def requested_outputs(header: dict[str, Any], names: list[str]) -> list[tuple[str, bool]]:
    """(name, as binary) for each asked-for output; every output when none is named."""
    params = header.get("parameters") or {}
    binary_default = bool(params.get("binary_data_output", False)) if isinstance(params, dict) else False
    outputs = header.get("outputs")
    if outputs is None:
        return [(name, binary_default) for name in names]
    if not isinstance(outputs, list) or not outputs or not all(isinstance(o, dict) for o in outputs):
        raise InvalidInput("'outputs' must be a list of objects with a 'name'")
    chosen = []
    for o in outputs:
        if o.get("name") not in names:
            raise InvalidInput(f"unknown output {o.get('name')!r}; the model's outputs: {', '.join(names)}")
        chosen.append((o["name"], bool((o.get("parameters") or {}).get("binary_data", binary_default))))
    return chosen


def infer_response(model: str, version: str, request_id: Any, tensors: list[Tensor]) -> Response:
    """The inference response: JSON, or its JSON header then each binary output's bytes."""
    outputs, blobs = [], []
    for t in tensors:
        entry: dict[str, Any] = {"name": t.name, "datatype": "FP32", "shape": list(t.array.shape)}
        if t.binary:
            blob = np.ascontiguousarray(t.array, dtype="<f4").tobytes()
            entry["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        else:
            entry["data"] = t.array.reshape(-1).tolist()
        outputs.append(entry)
    body = {"model_name": model, "model_version": version, "outputs": outputs}
    if request_id is not None:
        body["id"] = request_id
    head = orjson.dumps(body)
    if not blobs:
        return Response(head, 200, media_type=JSON_TYPE)
    return Response(head + b"".join(blobs), 200, media_type="application/octet-stream",
                    headers={"Inference-Header-Content-Length": str(len(head))})


ONNX_TO_PROTOCOL = {"tensor(float)": "FP32", "tensor(float16)": "FP16", "tensor(int64)": "INT64"}


def tensor_specs(args: list[Any]) -> list[dict[str, Any]]:
    """ONNX Runtime's NodeArgs as the Open Inference Protocol states tensors: name, datatype, shape (-1: any size)."""
    return [{"name": a.name, "datatype": ONNX_TO_PROTOCOL.get(a.type, a.type),
             "shape": [d if isinstance(d, int) else -1 for d in a.shape]} for a in args]


def signature(runtime: CapsNetRuntime) -> dict[str, list[dict[str, Any]]]:
    """The served graph's inputs and outputs: name, datatype and shape, read from its session."""
    session = runtime.session
    return {"inputs": tensor_specs(session.get_inputs()), "outputs": tensor_specs(session.get_outputs())}


class OpenInference:
    """One worker's v2 routes: the served runtime and batcher, and the other versions' runtimes on demand."""

    def __init__(self, runtime: CapsNetRuntime, batcher: Batcher, settings: Settings, ready: Any) -> None:
        self.runtime = runtime
        self.batcher = batcher
        self.settings = settings
        self.ready = ready  # () -> bool: false while the worker drains
        self.files: dict[str, Path] = runtime.variant_files  # read from the fp32 file's metadata once, at start-up
        self.others: dict[str, CapsNetRuntime] = {runtime.variant: runtime}
        self.lock = threading.Lock()
        self.signature = signature(runtime)
        self.output_names = [o["name"] for o in self.signature["outputs"]]

    def versions(self) -> list[str]:
        return list(self.files)

    def version_runtime(self, version: str) -> CapsNetRuntime:
        """The runtime of a version; created once, on first use."""
        with self.lock:
            if version not in self.others:
                try:
                    self.others[version] = CapsNetRuntime(self.settings.model, self.runtime.device,
                                                          self.settings.threads, version)
                except (ModelError, FileNotFoundError) as err:
                    raise NotFound(f"version {version!r} cannot be served: {err}") from None
            return self.others[version]

    def check(self, model: str, version: str | None) -> str:
        """The version a URL names (the served one when it names none); NotFound for another model or version."""
        if model != MODEL:
            raise NotFound(f"unknown model {model!r}; this server serves '{MODEL}'")
        if version is None:
            return self.runtime.variant
        if version not in self.files:
            raise NotFound(f"unknown version {version!r} of '{MODEL}'; its versions: {', '.join(self.files)}")
        return version

    def server_metadata(self) -> dict[str, Any]:
        return {"name": MODEL, "version": self.runtime.metadata.get("source_sha256", "")[:12],
                "extensions": EXTENSIONS}

    def model_metadata(self, version: str | None) -> dict[str, Any]:
        return {"name": MODEL, "versions": self.versions(), "platform": PLATFORM, **self.signature}

    async def outputs(self, version: str, images: np.ndarray, names: list[str]) -> list[np.ndarray]:
        """The named outputs of a version on checked images (HTTP and gRPC): through the batcher where it runs
        them, else in the version's own session, in a thread."""
        if version == self.runtime.variant and set(names) <= BATCHED:
            p = await self.batcher.predict_async(images)
            arrays = {"lengths": p.lengths, "reconstruction": p.reconstructions[:, None]}
            return [arrays[name] for name in names]
        runtime = await anyio.to_thread.run_sync(self.version_runtime, version)
        return await anyio.to_thread.run_sync(runtime.run, names, images)

    async def infer(self, version: str, body: bytes, header_length: str | None) -> Response:
        header, images, wanted = parse_infer_body(body, header_length, self.runtime.input_name, self.runtime.image_size,
                                                  self.output_names)
        values = await self.outputs(version, images, [name for name, _ in wanted])
        tensors = [Tensor(name, value, binary) for (name, binary), value in zip(wanted, values)]
        return infer_response(MODEL, version, header.get("id"), tensors)

    # The routes (serving/app.py's table names them): each takes the request, answers or raises.

    async def live(self, request: Request) -> Response:
        return Response(status_code=200)

    async def ready_route(self, request: Request) -> Response:
        """Server readiness, and a model's (after its model and version are checked): 503 while draining."""
        if "model" in request.path_params:
            self.check(request.path_params["model"], request.path_params.get("version"))
        return Response(status_code=200 if self.ready() else 503)

    async def server(self, request: Request) -> Response:
        return Response(orjson.dumps(self.server_metadata()), media_type=JSON_TYPE)

    async def model(self, request: Request) -> Response:
        version = self.check(request.path_params["model"], request.path_params.get("version"))
        return Response(orjson.dumps(self.model_metadata(version)), media_type=JSON_TYPE)

    async def infer_route(self, request: Request) -> Response:
        version = self.check(request.path_params["model"], request.path_params.get("version"))
        return await self.infer(version, await request.body(), request.headers.get(HEADER_LENGTH))

    async def unknown(self, request: Request) -> Response:
        raise NotFound(f"no route {request.method} {request.url.path} in the Open Inference Protocol")
