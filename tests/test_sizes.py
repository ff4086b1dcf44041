"""A graph for a bigger canvas is served with no change to the service: the image size comes from the graph.

A CapsNet built for 40x40 (the affNIST setup) is exported (untrained: the shape is the point, not the answers)
and served in-process through the worker's routes: /classify (JSON and raw), an upload, the Open Inference
Protocol and /docs.json all take and state 40x40, and refuse MNIST's 28x28 with the size they want.
"""

from __future__ import annotations

import asyncio
import io
import json

import numpy as np
import orjson
import pytest
import torch
from openapi_spec_validator import validate
from PIL import Image

from export.onnx_export import export_onnx
from serving.batching import MicroBatcher
from serving.inputs import InvalidInput
from serving.openapi import fix
from serving.preprocess import preprocess
from serving.routes import Routes
from serving.runtime import CapsNetRuntime
from serving.settings import Settings
from training.canvas import affnist_like
from training.data import load_split
from training.model import CapsNet, CapsNetConfig

SIZE = 40


@pytest.fixture(scope="module")
def routes(tmp_path_factory):
    torch.manual_seed(0)
    path = export_onnx(CapsNet(CapsNetConfig(image_size=SIZE)), tmp_path_factory.mktemp("canvas") / "capsnet-40.onnx")
    runtime = CapsNetRuntime(path, device="cpu", variant="fp32")
    return Routes(runtime, MicroBatcher(runtime), Settings.from_env())


@pytest.fixture(scope="module")
def turned(mnist_root) -> np.ndarray:
    x, _ = load_split("test", mnist_root, 8)
    return affnist_like(x)[0].numpy()


def body(response) -> dict:
    return json.loads(response.body)


def test_the_runtime_reads_the_size_from_the_graph(routes):
    assert routes.runtime.image_size == SIZE and routes.runtime.routing_grid == 12
    assert routes.metadata()["image_size"] == SIZE


def test_classify_json_and_raw_take_40x40_and_answer_as_the_runtime(routes, turned):
    expected = routes.runtime.predict(turned)
    as_json = body(asyncio.run(routes.classify_body(orjson.dumps({"images": turned[:, 0].tolist()}), "application/json")))
    raw = body(asyncio.run(routes.classify_body(turned.astype("<f4").tobytes(), "application/octet-stream")))
    assert as_json["labels"] == raw["labels"] == expected.labels.tolist()
    assert np.allclose(as_json["lengths"], expected.lengths, atol=1e-6)


def test_28x28_images_are_refused_with_the_size_the_graph_takes(routes):
    answer = asyncio.run(routes.classify_body(orjson.dumps({"images": np.zeros((1, 28, 28)).tolist()}), "application/json"))
    assert answer.status_code == 400 and "40x40" in body(answer)["error"]
    answer = asyncio.run(routes.classify_body(np.zeros((1, 28, 28), "<f4").tobytes(), "application/octet-stream"))
    assert answer.status_code == 400 and "N x 40 x 40" in body(answer)["error"]


def test_an_upload_is_placed_on_the_graphs_canvas(routes):
    digit = Image.new("L", (60, 90), 0)
    digit.paste(255, (25, 10, 35, 80))  # a bright bar: a "1"
    digit.save(png := io.BytesIO(), "PNG")
    answer = asyncio.run(routes.classify_image(png.getvalue()))
    assert answer.status_code == 200 and len(body(answer)["lengths"]) == 10
    image = preprocess(png.getvalue(), SIZE)[0]
    rows, cols = np.nonzero(image > 0.5)
    assert image.shape == (SIZE, SIZE) and abs(rows.mean() - SIZE / 2) < 1.5 and abs(cols.mean() - SIZE / 2) < 1.5
    assert rows.max() - rows.min() + 1 == 20  # fitted into 20x20, MNIST's scale, on the bigger canvas


def test_the_open_inference_protocol_states_and_takes_the_graphs_shape(routes, turned):
    meta = routes.v2.model_metadata(None)
    assert meta["inputs"][0]["shape"] == [-1, 1, SIZE, SIZE]
    request = {"inputs": [{"name": "image", "datatype": "FP32", "shape": list(turned.shape),
                           "data": turned.ravel().tolist()}], "outputs": [{"name": "lengths"}]}
    answer = asyncio.run(routes.v2.infer(routes.runtime.variant, orjson.dumps(request), None))
    lengths = np.asarray(body(answer)["outputs"][0]["data"]).reshape(len(turned), 10)
    assert np.allclose(lengths, routes.runtime.predict(turned).lengths, atol=1e-6)
    request["inputs"][0]["shape"] = [1, 1, 28, 28]
    request["inputs"][0]["data"] = [0.0] * 784
    with pytest.raises(InvalidInput, match=r"the model takes \[N, 1, 40, 40\]"):  # answered 400 by the route
        asyncio.run(routes.v2.infer(routes.runtime.variant, orjson.dumps(request), None))


def test_docs_json_states_the_graphs_size(client):
    document = fix(client.get("/docs.json").json(), SIZE, 12)
    validate(document)
    classify = document["paths"]["/classify"]["post"]["requestBody"]["content"]
    image = classify["application/json"]["schema"]["properties"]["images"]["anyOf"][0]["items"]
    assert image["minItems"] == image["maxItems"] == SIZE and image["items"]["maxItems"] == SIZE
    assert "N x 40 x 40" in classify["application/octet-stream"]["schema"]["description"]
    answer = document["paths"]["/explain"]["post"]["responses"]["200"]["content"]["application/json"]["schema"]
    assert answer["properties"]["routing_maps"]["items"]["maxItems"] == 12
