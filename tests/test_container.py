"""Your own model's CPU Bento and container image, built and run for real: `make container CAPSNET_MODEL=...`,
then `make container-run`.

The model is the tests' own (a CapsNet for 32x32 images trained on 256 digits by `make train` and exported by
`make export`: the `exported` fixture), not the published one, so the image must hold and serve the model it was
given: its /metadata names that file's sha256, the weights it came from and its image size, it answers digits on
its 32x32 canvas as in-process ONNX Runtime does on that file, and refuses MNIST's 28x28, which the published
model would take.
Built with Docker where an engine answers, else with buildah (chroot isolation) on a base image made from
Debian's packages; the test checks what the Bento holds (serving/, the model folder, ONNX Runtime's CPU build, no
torch), then serves real digits from inside the image, stops it as Ctrl-C would, and removes the image and the
Bento it made (the base image stays, as a cache).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Iterator

import httpx
import numpy as np
import psutil
import pytest
import yaml
from PIL import Image

from export.onnx_export import on_canvas
from loadtest.server import free_port, wait_ready
from mnist import read_split
from serving.preprocess import preprocess
from serving.runtime import CapsNetRuntime
from tests.conftest import OWN_CANVAS, base_image_built
from tests.test_hostile import CASES

ROOT = Path(__file__).resolve().parents[1]
IMAGE = "capsnet-test:cpu"
PUBLISHED_SOURCE = CapsNetRuntime(ROOT / "models" / "capsnet-mnist.onnx", device="cpu").metadata["source_sha256"]
IN_IMAGE = "/home/bentoml/bento"  # BentoML's BENTO_PATH: every process of the service names it


def docker_answers() -> bool:
    return shutil.which("docker") is not None and subprocess.run(
        ["docker", "info"], capture_output=True).returncode == 0


def can_build() -> bool:
    installable = shutil.which("apt-get") is not None and os.geteuid() == 0
    return docker_answers() or (shutil.which("buildah") is not None and os.geteuid() == 0) or installable


pytestmark = pytest.mark.skipif(not can_build(), reason="no Docker engine, and buildah cannot be used here")


def service_processes() -> list[psutil.Process]:
    found = []
    for p in psutil.process_iter(["cmdline"]):
        if any(IN_IMAGE in part for part in p.info["cmdline"] or []):
            found.append(p)
    return found


def remove_image() -> None:
    if docker_answers():
        subprocess.run(["docker", "rmi", "-f", IMAGE], capture_output=True)
    else:
        subprocess.run(["buildah", "rmi", "-f", f"localhost/{IMAGE}"], capture_output=True)


@pytest.fixture(scope="module")
def built(tmp_path_factory, exported):
    """`make container` of the tests' own model folder, the image tagged IMAGE and the Bento in a temporary
    BentoML home."""
    base_image_built()  # started in the background at the session's start (tests/conftest.py)
    env = {**os.environ, "IMAGE": IMAGE, "BENTOML_HOME": str(tmp_path_factory.mktemp("bentoml-home")),
           "CAPSNET_MODEL": str(exported.parent)}
    started = time.perf_counter()
    build = subprocess.run(["make", "container"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=1500)
    assert build.returncode == 0, build.stdout[-3000:] + build.stderr[-3000:]
    print(f"make container: {time.perf_counter() - started:.0f} s;", build.stderr.strip().splitlines()[-1])
    yield env
    remove_image()


GRPC: dict[str, str] = {}  # the running image's gRPC address (host:port), once `running` has started it


@contextlib.contextmanager
def serving_image(built: dict[str, str], log: Path, env: dict[str, str] | None = None) -> Iterator[tuple]:
    """`make container-run` on free loopback ports (HTTP and gRPC), in its own process group as a terminal would run
    it, once it answers /readyz: (its process, its URL); stopped afterwards, with nothing of it left."""
    port, grpc_port = free_port(), free_port()
    GRPC["address"] = f"127.0.0.1:{grpc_port}"
    with open(log, "w") as out:
        # Ctrl-C's default disposition, as in a terminal: a test run started in the background of a shell
        # without job control inherits SIGINT ignored, which run.sh could then not trap
        proc = subprocess.Popen(["make", "container-run", f"PORT={port}", f"GRPC_PORT={grpc_port}", "HOST=127.0.0.1"],
                                cwd=ROOT, env={**built, "CAPSNET_THREADS": "1", **(env or {})}, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True,
                                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        started = time.perf_counter()
        try:
            wait_ready(f"http://127.0.0.1:{port}", 180, proc)
        except (RuntimeError, TimeoutError) as err:
            os.killpg(proc.pid, signal.SIGKILL)
            raise AssertionError(f"{err}\n{log.read_text()[-3000:]}") from None
        print(f"make container-run: ready in {time.perf_counter() - started:.1f} s")
        yield proc, f"http://127.0.0.1:{port}"
        if proc.poll() is None:  # a test failed before the one that stops it
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
        for p in service_processes():
            p.kill()


@pytest.fixture(scope="module")
def running(built, tmp_path_factory):
    with serving_image(built, tmp_path_factory.mktemp("container") / "run.log") as served:
        yield served


@pytest.fixture(scope="module")
def here(running, exported):
    """The runtime in this process on the file the image serves (the variant its /metadata names)."""
    _, url = running
    variant = httpx.post(url + "/metadata", timeout=30).json()["variant"]
    return CapsNetRuntime(exported, device="cpu", variant=variant)


@pytest.fixture(scope="module")
def digits(mnist_root, here):
    """64 test digits centred on the own model's 32x32 canvas, their labels, and in-process ONNX Runtime's answer."""
    images, labels = read_split("test", mnist_root, 64)
    images = on_canvas(images[:, None], OWN_CANVAS)  # N x 1 x 32 x 32
    return images, labels, here.predict(images)


def test_the_bento_holds_serving_and_the_model_and_no_torch(built):
    (bento,) = (Path(built["BENTOML_HOME"]) / "bentos" / "capsnet").glob("*/bento.yaml")
    bento = bento.parent
    files = {str(p.relative_to(bento / "src")) for p in (bento / "src").rglob("*") if p.is_file()}
    model = {f"model/capsnet{suffix}" for suffix in (".onnx", "-int8.onnx", "-fp16.onnx", "-decoder.onnx",
                                                      ".verify.json", ".card.md")}
    assert {"serving/service.py", "serving/app.py", "serving/runtime.py", "serving/static/index.html"} | model <= files
    assert not any(f.startswith("models/") for f in files)  # the model it was given, and not the published one
    requirements = (bento / "env" / "python" / "requirements.txt").read_text()
    assert "onnxruntime==1.31.1" in requirements and "onnxruntime-gpu" not in requirements  # the CPU Bento
    assert not re.search(r"^torch", requirements, re.M)
    assert yaml.safe_load((bento / "bento.yaml").read_text())["service"] == "serving.service:CapsNet"


def test_metadata_names_the_file_it_was_given(running, exported, here):
    _, url = running
    info = httpx.post(url + "/metadata", timeout=30).json()
    served = here.model_path
    assert info["model_file"] == served.name and info["file_sha256"] == hashlib.sha256(served.read_bytes()).hexdigest()
    assert info["source_sha256"] == here.metadata["source_sha256"] != PUBLISHED_SOURCE
    assert info["providers"][0] == "CPUExecutionProvider"
    assert info["threads_per_worker"] == 1  # CAPSNET_THREADS=1, passed by make container-run, reached the worker
    assert info["image_size"] == OWN_CANVAS


def test_real_digits_as_json_and_as_raw_float32_agree_with_onnx_runtime_here(running, digits):
    _, url = running
    images, _, expected = digits
    mnist = httpx.post(url + "/classify", json={"images": images[:2, 0, 2:-2, 2:-2].tolist()}, timeout=60)
    assert mnist.status_code == 400 and "32x32" in mnist.json()["error"]  # MNIST's size: the published model's
    as_json = httpx.post(url + "/classify", json={"images": images[:, 0].tolist()}, timeout=60)
    raw = httpx.post(url + "/classify", content=images.astype("<f4").tobytes(), timeout=60,
                     headers={"Content-Type": "application/octet-stream"})
    for answer in (as_json, raw):
        assert answer.status_code == 200, answer.text[:300]
        assert answer.json()["labels"] == expected.labels.tolist()
        assert np.abs(np.array(answer.json()["lengths"]) - expected.lengths).max() < 1e-6  # the same file, CPU


def test_tritonclient_classifies_real_digits_binary_and_json(running, digits):
    import tritonclient.http as triton

    _, url = running
    images, _, expected = digits
    client = triton.InferenceServerClient(url=url.removeprefix("http://"), network_timeout=60)
    assert client.is_server_ready() and client.get_model_metadata("capsnet")["versions"] == ["fp32", "int8", "fp16"]
    for binary in (True, False):
        tensor = triton.InferInput("image", list(images.shape), "FP32")
        tensor.set_data_from_numpy(images.astype(np.float32), binary_data=binary)
        result = client.infer("capsnet", [tensor], outputs=[triton.InferRequestedOutput("lengths", binary_data=binary)])
        assert result.as_numpy("lengths").argmax(1).tolist() == expected.labels.tolist()
        assert np.abs(result.as_numpy("lengths") - expected.lengths).max() < 1e-6
    client.close()


def test_tritonclient_grpc_classifies_real_digits_raw(running, digits):
    """The Open Inference Protocol over gRPC from the image, on the port make container-run was given."""
    import tritonclient.grpc as tgrpc

    images, _, expected = digits
    with tgrpc.InferenceServerClient(GRPC["address"]) as client:
        assert client.is_server_ready() and client.is_model_ready("capsnet")
        tensor = tgrpc.InferInput("image", list(images.shape), "FP32")
        tensor.set_data_from_numpy(images.astype(np.float32))
        lengths = client.infer("capsnet", [tensor]).as_numpy("lengths")
    assert lengths.argmax(1).tolist() == expected.labels.tolist()
    assert np.abs(lengths - expected.lengths).max() < 1e-6


def test_a_png_upload_is_classified_as_here(running, digits, here):
    _, url = running
    images, _, _ = digits
    buf = io.BytesIO()
    Image.fromarray((255 * images[0, 0]).astype(np.uint8)).save(buf, format="PNG")
    expected = here.predict(preprocess(buf.getvalue(), OWN_CANVAS)[None])
    r = httpx.post(url + "/classify_image", files={"image": ("digit.png", buf.getvalue(), "image/png")}, timeout=60)
    assert r.status_code == 200 and r.json()["label"] == int(expected.labels[0])
    assert np.abs(np.array(r.json()["lengths"]) - expected.lengths[0]).max() < 1e-6


@pytest.mark.parametrize("case", [c for c in CASES if c[0] in {  # those whose answer does not hang on the image size
    "body over the limit", "chunked body over the limit", "not an image", "explain: empty batch"}],
    ids=lambda c: c[0])
def test_hostile_requests_get_their_4xx(running, case):
    _, url = running
    name, route, kwargs, status, fragment = case
    r = httpx.post(url + route, timeout=30, **kwargs)
    assert r.status_code == status and fragment in r.json()["error"], (name, r.text[:300])


def test_the_page_answers(running):
    _, url = running
    r = httpx.get(url + "/ui/", timeout=30)
    assert r.status_code == 200 and "<canvas" in r.text


def test_the_service_runs_as_a_user_that_is_not_root(running):
    """`bentoml serve` and its worker, the image's Python (buildah's own processes outside it are root)."""
    python = [p for p in service_processes() if "python" in p.cmdline()[0]]
    assert len(python) >= 2, "the image's `bentoml serve` and its worker were not found"
    assert all(p.uids().real != 0 for p in python), [(p.pid, p.uids().real, p.cmdline()[:3]) for p in python]


def test_ctrl_c_stops_it_and_leaves_nothing_running(running):
    proc, url = running
    os.killpg(proc.pid, signal.SIGINT)  # what a terminal sends to the foreground process group
    assert proc.wait(timeout=60) is not None
    _, alive = psutil.wait_procs(service_processes(), timeout=60)  # each one's exit, not a second's sleep
    assert alive == [] and service_processes() == []
    with pytest.raises(httpx.TransportError):
        httpx.get(url + "/readyz", timeout=3)
    if not docker_answers():
        left = subprocess.run(["buildah", "containers", "--format", "{{.ImageName}}"], capture_output=True,
                              text=True).stdout
        assert IMAGE not in left


def test_with_a_token_every_route_but_health_needs_it(built, tmp_path):
    """CAPSNET_API_TOKEN given to make container-run reaches the image: 401 without it, the answer with it."""
    with serving_image(built, tmp_path / "run.log", {"CAPSNET_API_TOKEN": "container-token"}) as (proc, url):
        assert httpx.get(url + "/readyz", timeout=30).status_code == 200
        refused = httpx.post(url + "/metadata", json={}, timeout=30)
        assert refused.status_code == 401 and refused.headers["www-authenticate"] == 'Bearer realm="capsnet"'
        assert httpx.get(url + "/metrics", timeout=30).status_code == 401
        allowed = httpx.post(url + "/metadata", json={}, timeout=30,
                             headers={"Authorization": "Bearer container-token"})
        assert allowed.status_code == 200 and allowed.json()["model_file"].endswith(".onnx")
        assert httpx.get(url + "/metrics", timeout=30, headers={"Authorization": "Bearer container-token"}
                         ).status_code == 200
        os.killpg(proc.pid, signal.SIGINT)
        proc.wait(timeout=60)
