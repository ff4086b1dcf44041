"""The API is what its OpenAPI document says, checked from outside against a real `bentoml serve`:
openapi-spec-validator on /docs.json, Schemathesis with all its checks (schemathesis.toml), BentoML's own
HTTP clients on every endpoint, and the Swagger page in headless Chromium."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
from pathlib import Path

import bentoml
import httpx
import numpy as np
import pytest
from openapi_spec_validator import validate

from mnist import read_split

ROOT = Path(__file__).resolve().parents[1]
SCHEMATHESIS = Path(sys.executable).with_name("schemathesis")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def digits(mnist_root):
    images, labels = read_split("test", mnist_root, 8)
    return images, labels


def test_docs_json_is_valid_openapi_3_and_documents_every_answer(service_url):
    document = httpx.get(service_url + "/docs.json", timeout=30).json()
    validate(document)  # raises on anything that is not OpenAPI 3
    classify = document["paths"]["/classify"]["post"]
    assert set(classify["requestBody"]["content"]) == {"application/json", "application/octet-stream"}
    for route in ("/classify", "/classify_image", "/reconstruct", "/explain", "/metadata"):
        answers = document["paths"][route]["post"]["responses"]
        assert {"200", "400", "413", "429", "503"} <= set(answers), route
        assert answers["400"]["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/Error"}
    images = classify["requestBody"]["content"]["application/json"]["schema"]["properties"]["images"]
    assert [option["maxItems"] for option in images["anyOf"]] == [256, 256]
    explain = document["paths"]["/explain"]["post"]
    images = explain["requestBody"]["content"]["application/json"]["schema"]["properties"]["images"]
    assert [option["maxItems"] for option in images["anyOf"]] == [16, 16]
    answer = explain["responses"]["200"]["content"]["application/json"]["schema"]
    assert answer["properties"]["routing_maps"]["items"]["maxItems"] == 6


def test_schemathesis_with_all_checks_finds_nothing(service_url, tmp_path):
    """The real CLI, a fixed seed and a bounded number of cases per operation, so that it repeats."""
    run = subprocess.run([str(SCHEMATHESIS), "run", service_url + "/docs.json", "--checks", "all",
                          "--max-examples", "25", "--seed", "20261128", "--report-dir", str(tmp_path)],
                         cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stdout[-6000:]
    assert "No issues found" in run.stdout
    assert "Tested: 9" in run.stdout  # the five APIs and BentoML's health and metrics routes


def test_bentoml_sync_client_drives_every_endpoint(service_url, digits):
    images, labels = digits
    with bentoml.SyncHTTPClient(service_url) as client:
        as_array = client.classify(images=images)  # a numpy array: the schema says it is a tensor
        as_lists = client.classify(images=images.tolist())
        assert as_array["labels"] == as_lists["labels"] == labels.tolist()
        assert np.allclose(as_array["lengths"], as_lists["lengths"])
        rebuilt = client.reconstruct(images=images[:2, None])  # N x 1 x 28 x 28 works too
        assert rebuilt["labels"] == labels[:2].tolist() and np.array(rebuilt["reconstructions"]).shape == (2, 28, 28)
        assert client.classify_image(image=ROOT / "docs" / "examples" / "digit.png")["label"] == 1
        assert client.metadata()["model_file"].endswith(".onnx")
        explained = client.explain(images=images[:2])
        assert explained["labels"] == labels[:2].tolist() and np.array(explained["routing_maps"]).shape == (2, 6, 6)
        with pytest.raises(bentoml.exceptions.BentoMLException, match=r"pixel values must lie in \[0, 1\]"):
            client.classify(images=np.full((1, 28, 28), 1.5, dtype=np.float32))


def test_bentoml_async_client_classifies_a_numpy_array(service_url, digits):
    images, labels = digits

    async def call() -> dict:
        async with bentoml.AsyncHTTPClient(service_url) as client:
            return await client.classify(images=images)

    assert asyncio.run(call())["labels"] == labels.tolist()


@pytest.mark.skipif(CHROMIUM is None and not os.environ.get("CI"), reason="Debian's chromium is not installed")
def test_the_swagger_page_lists_the_five_routes(service_url):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
            "--disable-sync", "--no-first-run"])
        page = browser.new_page()
        page.goto(service_url + "/")  # BentoML serves Swagger UI from its own files at /
        page.wait_for_selector(".opblock-summary-path", timeout=30_000)
        paths = set(page.locator(".opblock-summary-path").all_inner_texts())
        browser.close()
    assert {"/classify", "/classify_image", "/reconstruct", "/explain", "/metadata"} <= {p.strip() for p in paths}
