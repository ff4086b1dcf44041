"""The ecosystem's own client against a real `bentoml serve`: tritonclient's HTTP client (binary data on and off,
InferRequestedOutput, health, metadata) gets /classify's labels and lengths on real MNIST digits, on every
version, and the protocol's errors for an unknown model, version or output."""

from __future__ import annotations

import httpx
import numpy as np
import pytest
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException


@pytest.fixture(scope="module")
def triton_client(service_url):
    client = triton.InferenceServerClient(url=service_url.removeprefix("http://"), network_timeout=60)
    yield client
    client.close()


def infer(client, images: np.ndarray, binary: bool, version: str = "", outputs=("lengths",)) -> dict[str, np.ndarray]:
    tensor = triton.InferInput("image", list(images.shape), "FP32")
    tensor.set_data_from_numpy(images, binary_data=binary)
    result = client.infer("capsnet", [tensor], model_version=version,
                          outputs=[triton.InferRequestedOutput(name, binary_data=binary) for name in outputs])
    return {name: result.as_numpy(name) for name in outputs}


def test_health_and_metadata_through_tritonclient(triton_client):
    assert triton_client.is_server_live() and triton_client.is_server_ready()
    assert triton_client.is_model_ready("capsnet") and triton_client.is_model_ready("capsnet", "fp16")
    assert triton_client.get_server_metadata()["extensions"] == ["binary_tensor_data"]
    meta = triton_client.get_model_metadata("capsnet")
    assert meta["inputs"] == [{"name": "image", "datatype": "FP32", "shape": [-1, 1, 28, 28]}]
    assert [o["name"] for o in meta["outputs"]] == ["lengths", "poses", "reconstruction", "routing_map", "routing_types"]


def test_tritonclient_gets_classifys_answers_binary_and_json(triton_client, service_url, digits):
    images, labels, expected = digits
    batch = images[:32, None].astype(np.float32)
    classify = httpx.post(service_url + "/classify", json={"images": images[:32].tolist()}, timeout=60).json()
    for binary in (True, False):
        lengths = infer(triton_client, batch, binary)["lengths"]
        assert lengths.shape == (32, 10) and lengths.argmax(1).tolist() == classify["labels"] == expected[:32].tolist()
        assert np.abs(lengths - np.array(classify["lengths"])).max() < 1e-6
    assert (np.array(classify["labels"]) == labels[:32]).mean() >= 0.96  # and they are MNIST's own labels


def test_every_version_and_output_through_tritonclient(triton_client, digits):
    images, _, expected = digits
    batch = images[:8, None].astype(np.float32)
    for version in ("fp32", "int8", "fp16"):
        out = infer(triton_client, batch, True, version, outputs=("lengths", "reconstruction", "routing_map"))
        assert out["lengths"].argmax(1).tolist() == expected[:8].tolist(), version
        assert out["reconstruction"].shape == (8, 1, 28, 28) and out["routing_map"].shape == (8, 6, 6)


@pytest.mark.parametrize("model, version, output, phrase", [
    ("mnist", "", "lengths", "unknown model 'mnist'"),
    ("capsnet", "7", "lengths", "unknown version '7'"),
    ("capsnet", "", "labels", "unknown output 'labels'"),
])
def test_the_protocols_errors_reach_tritonclient(triton_client, digits, model, version, output, phrase):
    tensor = triton.InferInput("image", [1, 1, 28, 28], "FP32")
    tensor.set_data_from_numpy(digits[0][:1, None].astype(np.float32))
    with pytest.raises(InferenceServerException, match=phrase):
        triton_client.infer(model, [tensor], model_version=version, outputs=[triton.InferRequestedOutput(output)])
    assert triton_client.is_server_ready()


def test_tritonclient_grpc_gets_classifys_answers_raw_and_typed(service, digits):
    """The same over gRPC against the real process: tritonclient.grpc (raw contents), and the protocol's stub with
    typed contents; labels and lengths are /classify's."""
    import grpc
    import tritonclient.grpc as tgrpc
    from tritonclient.grpc import service_pb2, service_pb2_grpc

    images, _, expected = digits
    batch = images[:32, None].astype(np.float32)
    classify = httpx.post(service.url + "/classify", json={"images": images[:32].tolist()}, timeout=60).json()
    with tgrpc.InferenceServerClient(service.grpc) as client:
        assert client.is_server_ready() and client.is_model_ready("capsnet")
        tensor = tgrpc.InferInput("image", list(batch.shape), "FP32")
        tensor.set_data_from_numpy(batch)
        raw = client.infer("capsnet", [tensor], outputs=[tgrpc.InferRequestedOutput("lengths")]).as_numpy("lengths")
    request = service_pb2.ModelInferRequest(model_name="capsnet")
    request.inputs.add(name="image", datatype="FP32", shape=list(batch.shape)).contents.fp32_contents.extend(
        batch.reshape(-1).tolist())
    request.outputs.add(name="lengths")
    with grpc.insecure_channel(service.grpc) as channel:
        answer = service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=60)
    typed = np.array(answer.outputs[0].contents.fp32_contents).reshape(32, 10)
    for lengths in (raw, typed):
        assert lengths.argmax(1).tolist() == classify["labels"] == expected[:32].tolist()
        assert np.abs(lengths - np.array(classify["lengths"])).max() < 1e-6
