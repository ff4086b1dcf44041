"""The Open Inference Protocol over gRPC (`inference.GRPCInferenceService`, what `tritonclient.grpc` and KServe's
clients speak), in each worker process beside HTTP, on CAPSNET_GRPC_PORT (8001, as Triton and KServe use).

    ServerLive, ServerReady, ModelReady          live; ready false while the worker drains (ModelReady checks the
                                                 model and version first)
    ServerMetadata, ModelMetadata                as GET /v2 and /v2/models/capsnet[/versions/V]
    ModelInfer                                   one FP32 input `image` [N, 1, S, S], as typed contents
                                                 (fp32_contents) or raw_input_contents; outputs by name, answered
                                                 as raw_output_contents when the input came raw (or an output asks
                                                 for binary_data), else as typed contents

The same worker's OpenInference (serving/v2.py) answers both protocols: the same checks and messages, the same
batcher, the same versions (fp32, int8, fp16). A refusal is a gRPC status with the message HTTP would give:
INVALID_ARGUMENT (400), NOT_FOUND (404), RESOURCE_EXHAUSTED (413, and a message over the size limit, which gRPC
refuses before it reaches us), UNAVAILABLE (503, and every call while the worker drains).
"""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any, Callable

import grpc
import numpy as np

from serving.access import OPEN_GRPC, bearer_matches
from serving.errors import InvalidInput, NotFound, Overloaded, TooLarge
from serving.limits import MAX_BODY_BYTES
from serving.routes import check_pixels
from serving.settings import SettingsError
from serving.v2 import MODEL, OpenInference, check_input, check_output
from serving.v2_proto import MESSAGES, METHODS, SERVICE

CODES: list[tuple[type[Exception], grpc.StatusCode]] = [
    (TooLarge, grpc.StatusCode.RESOURCE_EXHAUSTED), (InvalidInput, grpc.StatusCode.INVALID_ARGUMENT),
    (NotFound, grpc.StatusCode.NOT_FOUND), (Overloaded, grpc.StatusCode.UNAVAILABLE)]
REFUSED = tuple(kind for kind, _ in CODES)


def images_of(request: Any, input_name: str, size: int) -> np.ndarray:
    """A ModelInferRequest's one input, checked as over HTTP: FP32 [N, 1, size, size] in [0, 1], N <= MAX_BATCH."""
    if len(request.inputs) != 1:
        raise InvalidInput(f"'inputs' must hold exactly one tensor, '{input_name}'; got {len(request.inputs)}")
    tensor = request.inputs[0]
    shape = check_input(tensor.name, tensor.datatype, list(tensor.shape), input_name, size)
    count = shape[0] * size * size
    if request.raw_input_contents:
        if len(request.raw_input_contents) != 1 or tensor.HasField("contents"):
            raise InvalidInput("raw_input_contents must hold one entry, for the one input, and no typed contents"
                               " beside it")
        raw = request.raw_input_contents[0]
        if len(raw) != count * 4:
            raise InvalidInput(f"input '{input_name}': raw_input_contents holds {len(raw)} bytes; shape {shape}"
                               f" as FP32 needs {count * 4}")
        array = np.frombuffer(raw, dtype="<f4")
    else:
        values = tensor.contents.fp32_contents
        if len(values) != count:
            raise InvalidInput(f"input '{input_name}': fp32_contents holds {len(values)} numbers; shape {shape}"
                               f" needs {count}")
        array = np.array(values, dtype=np.float32)
    return check_pixels(array.reshape(shape))


def parse_infer_request(request: Any, input_name: str, size: int, output_names: list[str]
                        ) -> tuple[np.ndarray, list[str], bool]:
    """A ModelInferRequest, checked: its images, the outputs it asks for, and whether to answer in raw contents."""
    images = images_of(request, input_name, size)
    names = [check_output(o.name, output_names) for o in request.outputs] if request.outputs else list(output_names)
    raw = bool(request.raw_input_contents) or any(binary_asked(o.parameters) for o in request.outputs)
    return images, names, raw


def binary_asked(parameters: Any) -> bool:
    return "binary_data" in parameters and parameters["binary_data"].bool_param


class GrpcInference:
    """The six methods, for one worker: its OpenInference, and whether it takes work (false while it drains)."""

    def __init__(self, v2: OpenInference, ready: Callable[[], bool], token: str = "") -> None:
        self.v2 = v2
        self.ready = ready
        self.token = token  # CAPSNET_API_TOKEN: every method but health needs it (serving/access.py)

    async def ServerLive(self, request: Any, context: Any) -> Any:
        return MESSAGES["ServerLiveResponse"](live=True)

    async def ServerReady(self, request: Any, context: Any) -> Any:
        return MESSAGES["ServerReadyResponse"](ready=self.ready())

    async def ModelReady(self, request: Any, context: Any) -> Any:
        self.v2.check(request.name, request.version or None)
        return MESSAGES["ModelReadyResponse"](ready=self.ready())

    async def ServerMetadata(self, request: Any, context: Any) -> Any:
        return MESSAGES["ServerMetadataResponse"](**self.v2.server_metadata())

    async def ModelMetadata(self, request: Any, context: Any) -> Any:
        meta = self.v2.model_metadata(self.v2.check(request.name, request.version or None))
        return MESSAGES["ModelMetadataResponse"](
            name=meta["name"], versions=meta["versions"], platform=meta["platform"],
            inputs=[MESSAGES["TensorMetadata"](**spec) for spec in meta["inputs"]],
            outputs=[MESSAGES["TensorMetadata"](**spec) for spec in meta["outputs"]])

    async def ModelInfer(self, request: Any, context: Any) -> Any:
        if not self.ready():
            raise Overloaded("this worker is shutting down; send the request again (to another replica)")
        version = self.v2.check(request.model_name, request.model_version or None)
        images, names, raw = parse_infer_request(request, self.v2.runtime.input_name, self.v2.runtime.image_size,
                                                 self.v2.output_names)
        values = await self.v2.outputs(version, images, names)
        answer = MESSAGES["ModelInferResponse"](model_name=MODEL, model_version=version, id=request.id)
        for name, value in zip(names, values):
            value = np.ascontiguousarray(value, dtype="<f4")
            output = answer.outputs.add(name=name, datatype="FP32", shape=list(value.shape))
            if raw:
                answer.raw_output_contents.append(value.tobytes())
            else:
                output.contents.fp32_contents.extend(value.reshape(-1).tolist())
        return answer


def handler(method: Callable, request_type: Any, response_type: Any, token: str = "") -> grpc.RpcMethodHandler:
    """A unary method whose refusals become their gRPC status and message, as HTTP's become theirs; with a token,
    a call without it is UNAUTHENTICATED."""
    async def call(request: Any, context: grpc.aio.ServicerContext) -> Any:
        if token and not bearer_matches(dict(context.invocation_metadata() or ()).get("authorization"), token):
            await context.abort(grpc.StatusCode.UNAUTHENTICATED,
                                "this service needs a token: send the metadata authorization: Bearer <token>")
        try:
            return await method(request, context)
        except REFUSED as err:
            code = next(code for kind, code in CODES if isinstance(err, kind))
            await context.abort(code, str(err))

    return grpc.unary_unary_rpc_method_handler(call, request_deserializer=request_type.FromString,
                                               response_serializer=response_type.SerializeToString)


def grpc_server(service: GrpcInference, port: int, host: str = "0.0.0.0", share_port: bool = False,
                tls: tuple[str, str] | None = None) -> grpc.aio.Server:
    """The gRPC server of one worker, bound (not started): messages up to the HTTP body limit; with share_port, the
    port is shared with the service's other workers (SO_REUSEPORT: the kernel spreads connections over them); with
    tls (certificate and key files: the ones HTTPS serves), TLS only."""
    handlers = {name: handler(getattr(service, name), MESSAGES[request], MESSAGES[response],
                              "" if name in OPEN_GRPC else service.token)
                for name, (request, response) in METHODS.items()}
    server = grpc.aio.server(options=[("grpc.max_receive_message_length", MAX_BODY_BYTES),
                                      ("grpc.max_send_message_length", MAX_BODY_BYTES),
                                      ("grpc.so_reuseport", int(share_port))])
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
    try:
        if tls:
            cert, key = (Path(path).read_bytes() for path in tls)
            bound = server.add_secure_port(f"{host}:{port}", grpc.ssl_server_credentials([(key, cert)]))
        else:
            bound = server.add_insecure_port(f"{host}:{port}")
    except RuntimeError:  # grpcio raises where older versions returned 0
        bound = 0
    if bound == 0:
        raise OSError(f"the gRPC port {host}:{port} cannot be bound (in use, or CAPSNET_GRPC_HOST is not this"
                      f" machine's)")
    return server


def check_port(host: str, port: int) -> None:
    """SettingsError when the gRPC port cannot be bound now (checked once, before any worker starts)."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        try:
            probe.bind((host, port))
        except OSError as err:
            raise SettingsError(f"CAPSNET_GRPC_PORT={port} on CAPSNET_GRPC_HOST={host}: cannot listen there"
                                f" ({err.strerror}); choose another port, or 0 for no gRPC") from None
