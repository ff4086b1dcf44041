"""Access control (serving/access.py), in-process: with CAPSNET_API_TOKEN every route but health answers 401 with
`WWW-Authenticate` without the token (or with another) and works with it; CAPSNET_CORS_ORIGINS answers a browser's
preflight for the allowed origins only. gRPC with a token: tests/test_grpc.py; the image with a token:
tests/test_container.py."""

from __future__ import annotations

from typing import Iterator

import numpy as np
import pytest
from starlette.testclient import TestClient

from tests.conftest import SERVICE_ENV, service_module

TOKEN = "s3cret-token_for.tests"
IMAGE = {"images": np.zeros((1, 28, 28)).tolist()}
# (method, route, JSON body or None): every kind of route the service answers, ours and BentoML's
GUARDED = [("POST", "/classify", IMAGE), ("POST", "/reconstruct", IMAGE), ("POST", "/explain", IMAGE),
           ("POST", "/metadata", {}), ("GET", "/ui/", None), ("GET", "/ui/model.onnx", None), ("GET", "/v2", None),
           ("GET", "/v2/models/capsnet", None), ("GET", "/docs.json", None), ("GET", "/schema.json", None),
           ("POST", "/v2/models/capsnet/infer", {"inputs": [{"name": "image", "datatype": "FP32", "shape": [1, 1, 28, 28],
                                                             "data": [0.0] * 784}], "outputs": [{"name": "lengths"}]})]
HEALTH = ["/livez", "/readyz", "/v2/health/live", "/v2/health/ready"]


@pytest.fixture(scope="module")
def guarded() -> Iterator[TestClient]:
    # metrics off: a second in-process BentoML app would register its metrics twice (the guard answers /metrics first)
    module = service_module({**SERVICE_ENV, "CAPSNET_API_TOKEN": TOKEN, "CAPSNET_METRICS": "0",
                             "CAPSNET_CORS_ORIGINS": "https://app.example.org"})
    with TestClient(module.CapsNet.to_asgi()) as client:
        yield client


def ask(client: TestClient, method: str, route: str, body, headers=None):
    return client.request(method, route, json=body, headers=headers or {})


@pytest.mark.parametrize("method, route, body", GUARDED + [("GET", "/metrics", None), ("POST", "/classify_image", None)])
def test_without_the_token_every_route_but_health_is_401(guarded, method, route, body):
    answer = ask(guarded, method, route, body)
    assert answer.status_code == 401 and answer.headers["www-authenticate"] == 'Bearer realm="capsnet"'
    assert "Authorization: Bearer" in answer.json()["error"]
    wrong = ask(guarded, method, route, body, {"Authorization": "Bearer " + TOKEN[:-1] + "X"})
    assert wrong.status_code == 401 and wrong.json()["error"] == "the token sent is not this service's"
    assert ask(guarded, method, route, body, {"Authorization": TOKEN}).status_code == 401  # no scheme


@pytest.mark.parametrize("method, route, body", GUARDED)
def test_with_the_token_every_route_answers(guarded, method, route, body):
    answer = ask(guarded, method, route, body, {"Authorization": f"Bearer {TOKEN}"})
    assert answer.status_code == 200, (route, answer.text[:200])


def test_health_needs_no_token(guarded):
    for route in HEALTH:
        assert guarded.get(route).status_code == 200, route


def test_an_allowed_origin_gets_the_preflight_and_the_header_and_another_does_not(guarded):
    preflight = {"Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "authorization,content-type"}
    allowed = guarded.options("/classify", headers={"Origin": "https://app.example.org", **preflight})
    assert allowed.status_code == 200 and allowed.headers["access-control-allow-origin"] == "https://app.example.org"
    assert "authorization" in allowed.headers["access-control-allow-headers"].lower()
    other = guarded.options("/classify", headers={"Origin": "https://elsewhere.example", **preflight})
    assert other.status_code == 400 and "access-control-allow-origin" not in other.headers
    answer = guarded.post("/classify", json=IMAGE, headers={"Origin": "https://app.example.org",
                                                             "Authorization": f"Bearer {TOKEN}"})
    assert answer.status_code == 200 and answer.headers["access-control-allow-origin"] == "https://app.example.org"


def test_without_a_token_or_origins_nothing_changes(client):
    """The default: open, and no CORS headers (the tests' own in-process service)."""
    answer = client.post("/classify", json=IMAGE, headers={"Origin": "https://app.example.org"})
    assert answer.status_code == 200 and "access-control-allow-origin" not in answer.headers


@pytest.mark.slow
def test_tls_with_bentomls_own_certificate_settings_to_a_verifying_client(tmp_path, served_onnx):
    """`bentoml serve --ssl-certfile --ssl-keyfile` (docs/serving.md, "Access"): a client that verifies the
    certificate gets the answer over HTTPS, and over gRPC, which serves the same certificate; one that does not
    trust it is refused by its own check, and a plaintext gRPC client gets no answer."""
    import shutil
    import subprocess
    import time

    import httpx

    from loadtest.server import bentoml_serve, free_port, start, stop_tree

    if shutil.which("openssl") is None:
        pytest.skip("needs openssl to make a certificate")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)
    port, grpc_port = free_port(), free_port()
    log = open(tmp_path / "serve.log", "w+")
    proc = start([*bentoml_serve(port), "--ssl-certfile", str(cert), "--ssl-keyfile", str(key)],
                 {**SERVICE_ENV, "CAPSNET_MODEL": str(served_onnx), "CAPSNET_GRPC_PORT": str(grpc_port)}, log)
    try:
        url, answer = f"https://127.0.0.1:{port}", None
        deadline = time.monotonic() + 120
        while answer is None and proc.poll() is None and time.monotonic() < deadline:
            try:
                answer = httpx.post(url + "/classify", json=IMAGE, verify=str(cert), timeout=10)
            except httpx.TransportError:
                time.sleep(0.5)
        assert answer is not None and answer.status_code == 200, log.seek(0) or log.read()[-2000:]
        assert len(answer.json()["lengths"][0]) == 10
        with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
            httpx.get(url + "/readyz", timeout=10)  # the system's trust store does not hold it

        import tritonclient.grpc as grpcclient
        from tritonclient.utils import InferenceServerException

        target = f"127.0.0.1:{grpc_port}"
        with grpcclient.InferenceServerClient(target, ssl=True, root_certificates=str(cert)) as client:
            tensor = grpcclient.InferInput("image", [1, 1, 28, 28], "FP32")
            tensor.set_data_from_numpy(np.asarray(IMAGE["images"], np.float32).reshape(1, 1, 28, 28))
            lengths = client.infer("capsnet", [tensor]).as_numpy("lengths")
            np.testing.assert_allclose(lengths, answer.json()["lengths"], atol=1e-6)
        with grpcclient.InferenceServerClient(target) as plain, pytest.raises(InferenceServerException):
            plain.is_server_live(client_timeout=10)
    finally:
        stop_tree(proc)
        log.close()
