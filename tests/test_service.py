"""Real HTTP against a real `bentoml serve` process (started once per session)."""

import json
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest

from serving.runtime import CapsNetRuntime
from tests.conftest import PUBLISHED
from training.data import load_split


def post(url, route, body, **kw):
    return httpx.post(url + route, content=body if isinstance(body, (bytes, str)) else json.dumps(body),
                      headers={"Content-Type": "application/json"}, timeout=60, **kw)


@pytest.fixture(scope="module")
def digits(mnist_root, served_onnx):
    x, y = load_split("test", mnist_root, 300)
    expected = CapsNetRuntime(served_onnx, device="cpu").predict(x.numpy()).labels
    return x.numpy()[:, 0], y.numpy(), expected


def test_health_and_metrics(service_url):
    assert httpx.get(service_url + "/livez").status_code == 200
    assert httpx.get(service_url + "/readyz").status_code == 200
    metrics = httpx.get(service_url + "/metrics")
    assert metrics.status_code == 200 and "# TYPE" in metrics.text


def test_classify_real_digits_matches_in_process_onnx_runtime(service_url, digits):
    images, labels, expected = digits
    r = post(service_url, "/classify", {"images": images[:64].tolist()})
    assert r.status_code == 200
    body = r.json()
    assert set(body) == {"labels", "lengths"}
    assert body["labels"] == expected[:64].tolist()
    lengths = np.array(body["lengths"])
    assert lengths.shape == (64, 10) and np.all((lengths >= 0) & (lengths < 1))
    if PUBLISHED.exists():
        assert np.mean(np.array(body["labels"]) == labels[:64]) >= 0.98


def test_classify_octet_stream_gives_the_json_answer(service_url, digits):
    images, _, expected = digits
    raw = httpx.post(service_url + "/classify", content=images[:64].astype("<f4").tobytes(),
                     headers={"Content-Type": "application/octet-stream"}, timeout=60)
    assert raw.status_code == 200 and raw.headers["content-type"] == "application/json"
    assert raw.json()["labels"] == expected[:64].tolist()
    as_json = post(service_url, "/classify", {"images": images[:64].tolist()}).json()
    assert np.allclose(raw.json()["lengths"], as_json["lengths"], atol=1e-6)


def test_metadata_reports_the_variant_in_use(service_url, served_onnx):
    from export.onnx_export import report_path

    info = httpx.post(service_url + "/metadata", timeout=30).json()
    if json.loads(report_path(served_onnx).read_text())["variants"]["int8"]["meets_accuracy_bar"]:
        assert info["variant"] == "int8" and info["model_file"] == "capsnet-int8.onnx"  # the CPU default
        assert 0 <= info["accuracy_loss_points"] <= 0.1
    else:  # a tiny stand-in model whose int8 variant missed its bar
        assert info["variant"] == "fp32" and info["model_file"] == "capsnet.onnx"


def test_classify_accepts_n_by_1_by_28_by_28(service_url, digits):
    images, _, expected = digits
    r = post(service_url, "/classify", {"images": images[:3, None].tolist()})
    assert r.status_code == 200 and r.json()["labels"] == expected[:3].tolist()


def test_concurrent_requests_are_batched_and_each_gets_its_own_answer(service_url, digits):
    images, _, expected = digits
    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(lambda i: post(service_url, "/classify", {"images": [images[i].tolist()]}),
                                range(200)))
    assert all(a.status_code == 200 for a in answers)
    assert [a.json()["labels"][0] for a in answers] == expected[:200].tolist()


def test_metadata_reports_model_and_providers(service_url, served_onnx):
    r = post(service_url, "/metadata", {})
    assert r.status_code == 200
    meta = r.json()
    assert meta["providers"] == ["CPUExecutionProvider"] and meta["routing_iterations"] == 3
    assert meta["opset"] == 18 and meta["model_name"] == "capsnet-mnist"
    if PUBLISHED.exists():
        card = json.loads(PUBLISHED.with_suffix(".json").read_text())
        assert meta["source_sha256"] == card["sha256"]


def test_reconstruct_returns_labels_and_images_in_unit_range(service_url, digits):
    images, _, expected = digits
    r = post(service_url, "/reconstruct", {"images": images[:4].tolist()})
    assert r.status_code == 200
    body = r.json()
    assert body["labels"] == expected[:4].tolist()
    recon = np.array(body["reconstructions"])
    assert recon.shape == (4, 28, 28) and recon.min() >= 0 and recon.max() <= 1
    # a reconstruction looks like its input more than like another digit
    errors = ((recon[:, None] - images[None, :4]) ** 2).sum((2, 3))
    assert np.array_equal(errors.argmin(1), np.arange(4))


def encoded(image: np.ndarray, fmt: str, invert: bool, size: int) -> bytes:
    import io

    from PIL import Image

    pixels = (255 * (1 - image if invert else image)).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).resize((size, size), Image.Resampling.BICUBIC).save(buf, format=fmt)
    return buf.getvalue()


@pytest.mark.parametrize("fmt, invert, size", [("PNG", False, 28), ("JPEG", True, 200)], ids=["png28", "jpeg-inverted"])
def test_uploads_agree_with_direct_onnx_runtime(service_url, digits, fmt, invert, size):
    images, _, expected = digits

    def send(i):
        r = httpx.post(service_url + "/classify_image", timeout=60,
                       files={"image": (f"d.{fmt.lower()}", encoded(images[i], fmt, invert, size))})
        assert r.status_code == 200, r.text
        return r.json()["label"]

    with ThreadPoolExecutor(8) as pool:
        labels = list(pool.map(send, range(len(images))))
    assert len(labels) == 300
    assert np.mean(np.array(labels) == expected) >= 0.99


def test_the_readme_curl_examples_are_shipped_and_answer(service_url, mnist_root, tmp_path):
    """docs/examples/digit.json (a 7) and digit.png (a 1) are what scripts/examples.py writes, and the
    README's two curl commands, run as written, answer 7 and 1."""
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    made = subprocess.run([sys.executable, "scripts/examples.py", "--data", str(mnist_root), "--out", str(tmp_path)],
                          cwd=root, capture_output=True, text=True)
    assert made.returncode == 0, made.stderr
    for name in ("digit.json", "digit.png"):
        assert (tmp_path / name).read_bytes() == (root / "docs" / "examples" / name).read_bytes(), name
    port = service_url.rsplit(":", 1)[1]
    readme = (root / "README.md").read_text()
    answers = []
    for command in [line[2:] for line in readme.splitlines() if line.startswith("$ curl -s -XPOST 127.0.0.1:3000/")]:
        run = subprocess.run(command.replace("127.0.0.1:3000", f"127.0.0.1:{port}"), shell=True, cwd=root,
                             capture_output=True, text=True, timeout=60)
        answers.append(json.loads(run.stdout))
    assert len(answers) == 2 and answers[0]["labels"] == [7] and answers[1]["label"] == 1


def test_explain_gives_the_winners_pose_routing_and_reconstruction(service_url, digits, served_onnx):
    """Real digits through HTTP: the same labels as /classify, the answer equals in-process ONNX Runtime's on the
    served variant, and the routing maps are PyTorch's (published weights) within the int8 tolerance."""
    import torch

    from training.checkpoint import load_weights

    images, _, expected = digits
    r = post(service_url, "/explain", {"images": images[:16].tolist()})
    assert r.status_code == 200, r.text[:300]
    body = r.json()
    assert body["labels"] == expected[:16].tolist()
    assert np.array(body["poses"]).shape == (16, 16) and np.array(body["routing_types"]).shape == (16, 32)
    maps = np.array(body["routing_maps"])
    assert maps.shape == (16, 6, 6) and np.all((maps > 0) & (maps < 1))
    assert np.array(body["reconstructions"]).shape == (16, 28, 28)
    variant = httpx.post(service_url + "/metadata", timeout=30).json()["variant"]
    here = CapsNetRuntime(served_onnx, device="cpu", variant=variant).explain(images[:16, None])
    assert np.abs(maps - here.routing_maps).max() < 1e-4 and np.abs(np.array(body["poses"]) - here.poses).max() < 1e-4
    # the pose's length is the class score
    assert np.allclose(np.linalg.norm(body["poses"], axis=1), np.array(body["lengths"]).max(1), atol=1e-3)
    if PUBLISHED.exists():
        model, _ = load_weights(PUBLISHED)
        with torch.no_grad():
            routing_map = model.explain(torch.from_numpy(images[:16, None]))[3].numpy()
        assert np.abs(maps - routing_map).max() < 1e-2
