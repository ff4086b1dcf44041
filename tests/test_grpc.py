"""The Open Inference Protocol over gRPC (serving/v2_grpc.py), in-process, with `tritonclient.grpc` as the client:
health and metadata, real digits as raw and as typed contents with /classify's answers, the other versions, the
drain, and a hostile set each answered with its status code and the service unharmed after. Against `make serve`'s
process: tests/test_e2e.py; against the image: tests/test_container.py."""

from __future__ import annotations

import asyncio
import gc
import threading
from typing import Iterator

import grpc
import numpy as np
import pytest
import tritonclient.grpc as tgrpc
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

from loadtest.server import free_port
from serving.batching import MicroBatcher
from serving.limits import MAX_BODY_BYTES
from serving.runtime import CapsNetRuntime
from serving.settings import Settings
from serving.v2 import OpenInference
from serving.v2_grpc import GrpcInference, grpc_server
from tests.conftest import PUBLISHED_ONNX


class Served:
    """A gRPC server of one worker's OpenInference on a free port, in a thread with its own event loop."""

    def __init__(self, token: str = "") -> None:
        self.token = token
        runtime = CapsNetRuntime(PUBLISHED_ONNX, device="cpu")
        self.draining = False
        self.v2 = OpenInference(runtime, MicroBatcher(runtime, runtime.merge_cap),
                                Settings(model=PUBLISHED_ONNX, device="cpu"), ready=lambda: not self.draining)
        self.address = f"127.0.0.1:{free_port()}"
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self.start(), self.loop).result(30)

    async def start(self) -> None:
        port = int(self.address.rsplit(":", 1)[1])
        self.server = grpc_server(GrpcInference(self.v2, lambda: not self.draining, self.token), port, "127.0.0.1")
        await self.server.start()

    def stop(self) -> None:
        async def stop() -> None:
            await self.server.stop(0)
            del self.server  # collected here, in its loop: collected after the loop is gone, it complains
            gc.collect()

        asyncio.run_coroutine_threadsafe(stop(), self.loop).result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(30)


@pytest.fixture(scope="module")
def served() -> Iterator[Served]:
    server = Served()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def triton(served) -> Iterator[tgrpc.InferenceServerClient]:
    with tgrpc.InferenceServerClient(served.address) as client:
        yield client


@pytest.fixture(scope="module")
def stub(served) -> Iterator[service_pb2_grpc.GRPCInferenceServiceStub]:
    """The protocol's stub as tritonclient ships it, for requests its high-level client does not make (typed
    contents, hostile messages)."""
    with grpc.insecure_channel(served.address, options=[("grpc.max_send_message_length", 64 * 2**20)]) as channel:
        yield service_pb2_grpc.GRPCInferenceServiceStub(channel)


def infer_raw(triton, images: np.ndarray, outputs=("lengths",), version: str = "") -> tgrpc.InferResult:
    tensor = tgrpc.InferInput("image", list(images.shape), "FP32")
    tensor.set_data_from_numpy(np.ascontiguousarray(images, dtype=np.float32))
    return triton.infer("capsnet", [tensor], model_version=version,
                        outputs=[tgrpc.InferRequestedOutput(name) for name in outputs])


def typed_request(images: np.ndarray, **fields) -> service_pb2.ModelInferRequest:
    request = service_pb2.ModelInferRequest(model_name="capsnet", id="typed-1", **fields)
    tensor = request.inputs.add(name="image", datatype="FP32", shape=list(images.shape))
    tensor.contents.fp32_contents.extend(images.reshape(-1).tolist())
    return request


def test_health_and_metadata(triton):
    assert triton.is_server_live() and triton.is_server_ready() and triton.is_model_ready("capsnet")
    assert triton.is_model_ready("capsnet", "fp16")
    server = triton.get_server_metadata(as_json=True)
    assert server["name"] == "capsnet" and server["extensions"] == ["binary_tensor_data"]
    meta = triton.get_model_metadata("capsnet", as_json=True)
    assert meta["versions"] == ["fp32", "int8", "fp16"] and meta["platform"] == "onnxruntime_onnx"
    assert meta["inputs"] == [{"name": "image", "datatype": "FP32", "shape": ["-1", "1", "28", "28"]}]
    assert [o["name"] for o in meta["outputs"]] == ["lengths", "poses", "reconstruction", "routing_map",
                                                    "routing_types"]


def test_real_digits_raw_and_typed_give_classifys_answers(triton, stub, client, digits):
    """Binary (raw_input_contents, as tritonclient sends) and typed contents: /classify's labels and lengths."""
    images, _, expected = digits
    batch = images[:16, None]
    answer = client.post("/classify", json={"images": images[:16].tolist()}).json()
    raw = infer_raw(triton, batch, outputs=("lengths",))
    assert np.abs(raw.as_numpy("lengths") - np.array(answer["lengths"])).max() <= 1e-6
    assert raw.as_numpy("lengths").argmax(1).tolist() == answer["labels"] == expected[:16].tolist()
    typed = stub.ModelInfer(typed_request(batch))
    assert typed.id == "typed-1" and typed.model_version == "int8" and not typed.raw_output_contents
    lengths = np.array(typed.outputs[0].contents.fp32_contents).reshape(typed.outputs[0].shape)
    assert typed.outputs[0].name == "lengths" and list(typed.outputs[0].shape) == [16, 10]
    assert np.abs(lengths - np.array(answer["lengths"])).max() <= 1e-6
    assert [o.name for o in typed.outputs] == ["lengths", "poses", "reconstruction", "routing_map", "routing_types"]


def test_every_version_and_output(triton, digits):
    images = digits[0][:4, None]
    for version in ("fp32", "int8", "fp16"):
        here = CapsNetRuntime(PUBLISHED_ONNX, device="cpu", variant=version).run(["lengths", "routing_map"], images)
        result = infer_raw(triton, images, outputs=("lengths", "routing_map"), version=version)
        assert result.get_response().model_version == version
        assert np.abs(result.as_numpy("lengths") - here[0]).max() <= 1e-6
        assert result.as_numpy("routing_map").shape == (4, 6, 6)


def status(call) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as refused:
        call()
    return refused.value.code(), refused.value.details()


ONE = np.zeros((1, 1, 28, 28), np.float32)


def hostile(stub) -> list[tuple[str, object, grpc.StatusCode, str]]:
    """(what, the call, its status, words its message holds)."""
    I, N, R = grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND, grpc.StatusCode.RESOURCE_EXHAUSTED

    def request(datatype="FP32", shape=(1, 1, 28, 28), name="image", raw: bytes | None = None, values=784,
                outputs=(), model="capsnet", version=""):
        r = service_pb2.ModelInferRequest(model_name=model, model_version=version)
        tensor = r.inputs.add(name=name, datatype=datatype, shape=list(shape))
        if raw is None:
            tensor.contents.fp32_contents.extend([0.0] * values)
        else:
            r.raw_input_contents.append(raw)
        for output in outputs:
            r.outputs.add(name=output)
        return lambda: stub.ModelInfer(r)

    return [
        ("wrong datatype", request(datatype="INT32"), I, "datatype 'INT32'"),
        ("shape that does not match the data", request(shape=(2, 1, 28, 28)), I, "holds 784 numbers"),
        ("wrong image size", request(shape=(1, 1, 27, 28), values=756), I, "[N, 1, 28, 28]"),
        ("raw contents of the wrong size", request(raw=b"\0" * 100), I, "raw_input_contents holds 100 bytes"),
        ("unknown input", request(name="pixels"), I, "unknown input 'pixels'"),
        ("unknown output", request(outputs=("logits",)), I, "unknown output 'logits'"),
        ("unknown version", request(version="int4"), N, "unknown version 'int4'"),
        ("unknown model", request(model="resnet"), N, "unknown model 'resnet'"),
        ("a claimed batch of 10^9", request(shape=(10**9, 1, 28, 28)), R, "at most 256 per request"),
        ("pixels out of range", request(raw=np.full(784, 3.0, "<f4").tobytes()), I, "[0, 1]"),
        ("NaN", request(raw=np.full(784, np.nan, "<f4").tobytes()), I, "NaN"),
        ("a message over the limit", request(raw=b"\0" * (MAX_BODY_BYTES + 1)), R, "larger than max"),
        ("no input", lambda: stub.ModelInfer(service_pb2.ModelInferRequest(model_name="capsnet")), I,
         "exactly one tensor"),
        ("model ready of an unknown model", lambda: stub.ModelReady(service_pb2.ModelReadyRequest(name="x")), N,
         "unknown model 'x'"),
        ("metadata of an unknown version",
         lambda: stub.ModelMetadata(service_pb2.ModelMetadataRequest(name="capsnet", version="9")), N,
         "unknown version '9'"),
    ]


def test_hostile_requests_get_their_status_and_leave_the_service_unharmed(stub, triton, digits):
    images, _, expected = digits
    for what, call, code, words in hostile(stub):
        got, message = status(call)
        assert (got, words in message) == (code, True), (what, got, message)
        assert infer_raw(triton, images[:2, None]).as_numpy("lengths").argmax(1).tolist() == expected[:2].tolist(), what


def test_a_draining_worker_is_not_ready_and_refuses_work(served, triton, stub):
    served.draining = True
    try:
        assert triton.is_server_live() and not triton.is_server_ready() and not triton.is_model_ready("capsnet")
        code, message = status(lambda: stub.ModelInfer(typed_request(ONE)))
        assert code == grpc.StatusCode.UNAVAILABLE and "shutting down" in message
    finally:
        served.draining = False
    assert triton.is_server_ready()


def test_tritonclient_reports_a_refusal_readably(triton):
    with pytest.raises(InferenceServerException) as refused:
        infer_raw(triton, np.full((1, 1, 28, 28), 2.0, np.float32))
    assert "pixel values must lie in [0, 1]" in str(refused.value)


def test_with_a_token_every_method_but_health_needs_it():
    """CAPSNET_API_TOKEN over gRPC: the `authorization` metadata, UNAUTHENTICATED without it; health stays open."""
    server = Served(token="grpc-token")
    try:
        with tgrpc.InferenceServerClient(server.address) as open_client:
            assert open_client.is_server_live() and open_client.is_server_ready() and open_client.is_model_ready("capsnet")
            with pytest.raises(InferenceServerException) as refused:
                infer_raw(open_client, ONE)
            assert refused.value.status() == "StatusCode.UNAUTHENTICATED" and "Bearer <token>" in refused.value.message()
            with pytest.raises(InferenceServerException):
                open_client.get_model_metadata("capsnet", headers={"authorization": "Bearer wrong"})
            tensor = tgrpc.InferInput("image", [1, 1, 28, 28], "FP32")
            tensor.set_data_from_numpy(ONE)
            answer = open_client.infer("capsnet", [tensor], headers={"authorization": "Bearer grpc-token"})
            assert answer.as_numpy("lengths").shape == (1, 10)
    finally:
        server.stop()
