"""The Open Inference Protocol (serving/v2.py) in-process on real MNIST digits: JSON and binary tensors give
/classify's answers, outputs are chosen by name, every version answers, and hostile v2 requests get a
readable 4xx and leave the service as it was. tritonclient against a real service: tests/test_tritonclient.py."""

from __future__ import annotations

import json

import numpy as np
import pytest

from serving.runtime import CapsNetRuntime
from tests.conftest import PUBLISHED_ONNX

INFER = "/v2/models/capsnet/infer"


def infer_json(images: np.ndarray, outputs: list[str] | None = None, **extra) -> dict:
    body = {"inputs": [{"name": "image", "datatype": "FP32", "shape": [len(images), 1, 28, 28],
                        "data": images.reshape(-1).tolist()}], **extra}
    if outputs is not None:
        body["outputs"] = [{"name": name} for name in outputs]
    return body


def binary_request(images: np.ndarray, outputs: list[str], binary_out: bool = True) -> tuple[bytes, dict]:
    raw = images.astype("<f4").tobytes()
    header = json.dumps({"inputs": [{"name": "image", "datatype": "FP32", "shape": [len(images), 1, 28, 28],
                                     "parameters": {"binary_data_size": len(raw)}}],
                         "outputs": [{"name": n, "parameters": {"binary_data": binary_out}} for n in outputs]}).encode()
    return header + raw, {"Inference-Header-Content-Length": str(len(header)),
                          "Content-Type": "application/octet-stream"}


def binary_outputs(response) -> dict[str, np.ndarray]:
    size = int(response.headers["inference-header-content-length"])
    header = json.loads(response.content[:size])
    arrays, offset = {}, size
    for out in header["outputs"]:
        n = out["parameters"]["binary_data_size"]
        arrays[out["name"]] = np.frombuffer(response.content[offset:offset + n], "<f4").reshape(out["shape"])
        offset += n
    assert offset == len(response.content)
    return arrays


def test_health_server_and_model_metadata(client):
    assert client.get("/v2/health/live").status_code == 200
    assert client.get("/v2/health/ready").status_code == 200
    assert client.get("/v2/models/capsnet/ready").status_code == 200
    assert client.get("/v2/models/capsnet/versions/fp16/ready").status_code == 200
    server = client.get("/v2").json()
    assert server["name"] == "capsnet" and server["extensions"] == ["binary_tensor_data"]
    meta = client.get("/v2/models/capsnet").json()
    assert meta["versions"] == ["fp32", "int8", "fp16"] and meta["platform"] == "onnxruntime_onnx"
    assert meta["inputs"] == [{"name": "image", "datatype": "FP32", "shape": [-1, 1, 28, 28]}]
    assert meta["outputs"] == [{"name": "lengths", "datatype": "FP32", "shape": [-1, 10]},
                               {"name": "poses", "datatype": "FP32", "shape": [-1, 10, 16]},
                               {"name": "reconstruction", "datatype": "FP32", "shape": [-1, 1, 28, 28]},
                               {"name": "routing_map", "datatype": "FP32", "shape": [-1, 6, 6]},
                               {"name": "routing_types", "datatype": "FP32", "shape": [-1, 32]}]
    assert client.get("/v2/models/capsnet/versions/int8").json() == meta


def test_json_and_binary_answers_equal_classify(client, digits):
    images, _, expected = digits
    batch = images[:16]
    classify = client.post("/classify", json={"images": batch.tolist()}).json()
    as_json = client.post(INFER, json=infer_json(batch, ["lengths"], id="r1")).json()
    assert as_json["model_name"] == "capsnet" and as_json["model_version"] == "int8" and as_json["id"] == "r1"
    (out,) = as_json["outputs"]
    assert out["name"] == "lengths" and out["datatype"] == "FP32" and out["shape"] == [16, 10]
    lengths = np.array(out["data"], dtype=np.float32).reshape(16, 10)
    body, headers = binary_request(batch, ["lengths"])
    response = client.post(INFER, content=body, headers=headers)
    assert response.status_code == 200 and response.headers["content-type"] == "application/octet-stream"
    binary = binary_outputs(response)["lengths"]
    assert lengths.argmax(1).tolist() == binary.argmax(1).tolist() == classify["labels"] == expected[:16].tolist()
    assert np.abs(lengths - np.array(classify["lengths"])).max() < 1e-6
    assert np.abs(binary - np.array(classify["lengths"])).max() < 1e-6
    nested = infer_json(batch[:2], ["lengths"])
    nested["inputs"][0]["data"] = batch[:2, None].tolist()  # the protocol allows nested data too
    assert client.post(INFER, json=nested).json()["outputs"][0]["data"] == np.array(classify["lengths"][:2]).reshape(-1).tolist()


def test_every_version_and_output_answers_as_in_process_onnx_runtime(client, digits):
    images, _, _ = digits
    batch = images[:4, None]
    for version in ("fp32", "int8", "fp16"):
        runtime = CapsNetRuntime(PUBLISHED_ONNX, device="cpu", variant=version)
        names = ["routing_map", "lengths", "poses"]
        body, headers = binary_request(images[:4], names)
        got = binary_outputs(client.post(f"/v2/models/capsnet/versions/{version}/infer", content=body, headers=headers))
        for name, want in zip(names, runtime.run(names, batch)):
            assert got[name].shape == want.shape and np.abs(got[name] - want).max() < 1e-6, (version, name)
    every = client.post(INFER, json=infer_json(images[:1])).json()  # no outputs named: all of them
    assert [o["name"] for o in every["outputs"]] == ["lengths", "poses", "reconstruction", "routing_map", "routing_types"]


def hostile_cases(image: np.ndarray) -> list[tuple[str, dict | bytes, dict, int, str]]:
    """(what, body, headers, status, a phrase of the error) for requests of each kind a careful user tries."""
    raw = image.astype("<f4").tobytes()

    def with_input(**changes) -> dict:
        body = infer_json(image[None], ["lengths"])
        body["inputs"][0].update(changes)
        return body

    header = json.dumps({"inputs": [{"name": "image", "datatype": "FP32", "shape": [1, 1, 28, 28],
                                     "parameters": {"binary_data_size": len(raw)}}]}).encode()
    return [
        ("wrong datatype", with_input(datatype="INT64"), {}, 400, "takes FP32"),
        ("datatype BYTES", with_input(datatype="BYTES"), {}, 400, "takes FP32"),
        ("shape that does not match the data", with_input(shape=[2, 1, 28, 28]), {}, 400, "needs 1568"),
        ("shape of another image size", with_input(shape=[1, 1, 32, 32]), {}, 400, "[N, 1, 28, 28]"),
        ("a shape that claims far more than the body holds", with_input(shape=[10**9, 1, 28, 28]), {}, 413, "at most 256"),
        ("negative batch", with_input(shape=[-1, 1, 28, 28]), {}, 400, "N >= 1"),
        ("fractional dims", with_input(shape=[1.5, 1, 28, 28]), {}, 400, "[N, 1, 28, 28]"),
        ("unknown input name", with_input(name="images"), {}, 400, "unknown input 'images'"),
        ("pixels out of range", with_input(data=[2.0] * 784), {}, 400, "[0, 1]"),
        ("strings as data", with_input(data=["a"] * 784), {}, 400, "must be numbers"),
        ("two inputs", {"inputs": [infer_json(image[None])["inputs"][0]] * 2}, {}, 400, "exactly one tensor"),
        ("no inputs", {"outputs": [{"name": "lengths"}]}, {}, 400, "exactly one tensor"),
        ("unknown output", infer_json(image[None], ["labels"]), {}, 400, "unknown output 'labels'"),
        ("not JSON", b"{not json", {"Content-Type": "application/json"}, 400, "not JSON"),
        ("a JSON array", b"[1, 2]", {"Content-Type": "application/json"}, 400, "JSON object"),
        ("binary size that lies (short)", header + raw[:-4], {"Inference-Header-Content-Length": str(len(header))},
         400, "must both be 3136"),
        ("binary size that lies (long)", header + raw + b"\0" * 4, {"Inference-Header-Content-Length": str(len(header))},
         400, "must both be 3136"),
        ("header length past the body", header + raw, {"Inference-Header-Content-Length": "999999"}, 400,
         "Inference-Header-Content-Length"),
        ("header length of superscript digits (fuzz/findings/v2-binary)", header + raw,
         {"Inference-Header-Content-Length": "¹¹¹".encode("latin-1")}, 400, "Inference-Header-Content-Length"),
        ("header length not a number", header + raw, {"Inference-Header-Content-Length": "abc"}, 400,
         "Inference-Header-Content-Length"),
        ("binary data without binary_data_size", json.dumps(infer_json(image[None])).encode() + raw,
         {"Inference-Header-Content-Length": str(len(json.dumps(infer_json(image[None]))))}, 400, "no input has"),
    ]


BLANK = np.zeros((28, 28), np.float32)  # what the hostile requests carry: their point is the rest of the request


@pytest.mark.parametrize("name, body, headers, status, reason", hostile_cases(BLANK), ids=[c[0] for c in hostile_cases(BLANK)])
def test_hostile_v2_requests_get_a_readable_4xx(client, digits, name, body, headers, status, reason):
    images, _, expected = digits
    if isinstance(body, dict):
        response = client.post(INFER, json=body)
    else:
        response = client.post(INFER, content=body, headers=headers)
    assert response.status_code == status, (name, response.text)
    assert reason in response.json()["error"], (name, response.json())
    ok = client.post(INFER, json=infer_json(images[:1], ["lengths"])).json()  # the service as it was
    assert np.argmax(ok["outputs"][0]["data"]) == expected[0]


@pytest.mark.parametrize("path, status, reason", [
    ("/v2/models/mnist/infer", 404, "unknown model 'mnist'"),
    ("/v2/models/capsnet/versions/int4/infer", 404, "unknown version 'int4'"),
    ("/v2/models/capsnet/versions/1/infer", 404, "its versions: fp32, int8, fp16"),
    ("/v2/models/capsnet/stats", 404, "no route"),
])
def test_unknown_models_versions_and_routes_get_404(client, digits, path, status, reason):
    response = client.post(path, json=infer_json(digits[0][:1]))
    assert response.status_code == status and reason in response.json()["error"]
    assert client.get("/v2/models/mnist").status_code == 404
    for method, route, allowed in (("DELETE", "/v2/models/capsnet", "GET"), ("GET", "/v2/models/capsnet/infer", "POST"),
                                   ("PUT", "/v2/health/live", "GET"), ("POST", "/v2", "GET")):
        refused = client.request(method, route)
        assert refused.status_code == 405 and refused.headers["allow"] == allowed, (method, route)
