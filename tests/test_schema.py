"""The API is what its OpenAPI document says: openapi-spec-validator on /docs.json (in-process), and from
outside against a real `bentoml serve`, Schemathesis's CLI with all its checks (schemathesis.toml) and the
Swagger page in headless Chromium. BentoML's own clients: tests/test_e2e.py."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from openapi_spec_validator import validate
from tests.conftest import REQUIRE_TOOLS


ROOT = Path(__file__).resolve().parents[1]
SCHEMATHESIS = Path(sys.executable).with_name("schemathesis")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def test_docs_json_is_valid_openapi_3_and_documents_every_answer(client):
    document = client.get("/docs.json").json()
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


@pytest.mark.slow
def test_schemathesis_with_all_checks_finds_nothing(service_url, tmp_path):
    """The real CLI, a fixed seed and a bounded number of cases per operation, so that it repeats."""
    run = subprocess.run([str(SCHEMATHESIS), "run", service_url + "/docs.json", "--checks", "all",
                          "--max-examples", "15", "--seed", "20261128", "--report-dir", str(tmp_path)],
                         cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stdout[-6000:]
    assert "Failures:" not in run.stdout and "Tested: 18" in run.stdout  # the five APIs, BentoML's health and
    # metrics routes, the nine v2 routes. Its one warning: no schema can tie an inference request's tensor shape
    # to its data, so most generated v2 inference requests are refused (400, with the reason)
    warnings = [line.strip() for line in run.stdout.splitlines() if line.strip().startswith("⚠️")]
    assert warnings in ([], ["⚠️ Schema validation mismatch: 2 operations mostly rejected generated data"]), warnings


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None and not REQUIRE_TOOLS, reason="Debian's chromium is not installed")
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
