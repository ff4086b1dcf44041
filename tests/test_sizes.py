"""A graph for a bigger canvas is served with no change to the service: the image size comes from the graph.

A CapsNet built for 40x40 (the affNIST setup) is exported (untrained: the shape is the point, not the answers)
and served in-process through the route table (serving/app.py) over the worker's routes: /classify (JSON and
raw), an upload, the Open Inference Protocol and /docs.json all take and state 40x40, and refuse MNIST's 28x28
with the size they want. It exports a model, so `make test-quick` leaves it out (tests/conftest.py).
"""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from openapi_spec_validator import validate
from PIL import Image
from starlette.applications import Starlette
from starlette.testclient import TestClient

from export.onnx_export import export_onnx
from serving.app import Bound, Front
from serving.batching import MicroBatcher
from serving.lifecycle import Drain
from serving.openapi import fix
from serving.preprocess import preprocess
from serving.routes import Routes
from serving.runtime import CapsNetRuntime
from serving.v2 import OpenInference
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
    batcher, settings = MicroBatcher(runtime), Settings.from_env()
    return Routes(runtime, batcher, settings), OpenInference(runtime, batcher, settings, ready=lambda: True)


@pytest.fixture(scope="module")
def canvas(routes):
    """The route table over the 40x40 model's routes; what BentoML would answer is a 404 here."""
    worker = Bound()
    worker.bind(*routes)
    with TestClient(Front(Starlette(), worker, Drain(5, 10))) as local:
        yield local


@pytest.fixture(scope="module")
def turned(mnist_root) -> np.ndarray:
    x, _ = load_split("test", mnist_root, 8)
    return affnist_like(x)[0].numpy()


def test_the_runtime_reads_the_size_from_the_graph(routes):
    assert routes[0].runtime.image_size == SIZE and routes[0].runtime.routing_grid == 12
    assert routes[0].metadata()["image_size"] == SIZE


def test_classify_json_and_raw_take_40x40_and_answer_as_the_runtime(canvas, routes, turned):
    expected = routes[0].runtime.predict(turned)
    as_json = canvas.post("/classify", json={"images": turned[:, 0].tolist()}).json()
    raw = canvas.post("/classify", content=turned.astype("<f4").tobytes(),
                      headers={"Content-Type": "application/octet-stream"}).json()
    assert as_json["labels"] == raw["labels"] == expected.labels.tolist()
    assert np.abs(np.array(as_json["lengths"]) - expected.lengths).max() < 1e-6


def test_28x28_images_are_refused_with_the_size_the_graph_takes(canvas):
    answer = canvas.post("/classify", json={"images": np.zeros((1, 28, 28)).tolist()})
    assert answer.status_code == 400 and "40x40" in answer.json()["error"]
    answer = canvas.post("/classify", content=np.zeros((1, 28, 28), "<f4").tobytes(),
                         headers={"Content-Type": "application/octet-stream"})
    assert answer.status_code == 400 and "N x 40 x 40" in answer.json()["error"]


def test_an_upload_is_placed_on_the_graphs_canvas(canvas):
    digit = Image.new("L", (60, 90), 0)
    digit.paste(255, (25, 10, 35, 80))  # a bright bar: a "1"
    digit.save(png := io.BytesIO(), "PNG")
    answer = canvas.post("/classify_image", files={"image": ("bar.png", png.getvalue())})
    assert answer.status_code == 200 and len(answer.json()["lengths"]) == 10
    image = preprocess(png.getvalue(), SIZE)[0]
    rows, cols = np.nonzero(image > 0.5)
    assert image.shape == (SIZE, SIZE) and abs(rows.mean() - SIZE / 2) < 1.5 and abs(cols.mean() - SIZE / 2) < 1.5
    assert rows.max() - rows.min() + 1 == 20  # fitted into 20x20, MNIST's scale, on the bigger canvas


def test_the_open_inference_protocol_states_and_takes_the_graphs_shape(canvas, routes, turned):
    assert canvas.get("/v2/models/capsnet").json()["inputs"][0]["shape"] == [-1, 1, SIZE, SIZE]
    request = {"inputs": [{"name": "image", "datatype": "FP32", "shape": list(turned.shape),
                           "data": turned.ravel().tolist()}], "outputs": [{"name": "lengths"}]}
    answer = canvas.post("/v2/models/capsnet/infer", json=request).json()
    lengths = np.asarray(answer["outputs"][0]["data"]).reshape(len(turned), 10)
    assert np.abs(lengths - routes[0].runtime.predict(turned).lengths).max() < 1e-6
    request["inputs"][0]["shape"] = [1, 1, 28, 28]
    request["inputs"][0]["data"] = [0.0] * 784
    refused = canvas.post("/v2/models/capsnet/infer", json=request)
    assert refused.status_code == 400 and "the model takes [N, 1, 40, 40]" in refused.json()["error"]


def test_docs_json_states_the_graphs_size(client):
    document = fix(client.get("/docs.json").json(), SIZE, 12)
    validate(document)
    classify = document["paths"]["/classify"]["post"]["requestBody"]["content"]
    image = classify["application/json"]["schema"]["properties"]["images"]["anyOf"][0]["items"]
    assert image["minItems"] == image["maxItems"] == SIZE and image["items"]["maxItems"] == SIZE
    assert "N x 40 x 40" in classify["application/octet-stream"]["schema"]["description"]
    answer = document["paths"]["/explain"]["post"]["responses"]["200"]["content"]["application/json"]["schema"]
    assert answer["properties"]["routing_maps"]["items"]["maxItems"] == 12
