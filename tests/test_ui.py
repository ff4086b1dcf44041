"""The page at /ui in real headless Chromium (Debian's chromium, driven by Playwright)."""

import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from serving.preprocess import preprocess
from serving.runtime import CapsNetRuntime
from mnist import read_split
from export.onnx_export import DECODER_TOLERANCE
from tests.conftest import REQUIRE_TOOLS

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]
pytestmark = pytest.mark.skipif(CHROMIUM is None and not REQUIRE_TOOLS,
                                reason="Debian's chromium is not installed (CI installs it)")


def launch(playwright):
    """Debian's Chromium, headless, as every test here drives it."""
    return playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)


def test_upload_a_real_digit_and_read_the_label(service_url, served_onnx, mnist_root, tmp_path):
    from playwright.sync_api import sync_playwright

    x, _ = read_split("test", mnist_root, 5)
    png = tmp_path / "digit.png"
    Image.fromarray((255 * x[4]).astype(np.uint8)).resize((140, 140)).save(png)
    expected = int(CapsNetRuntime(served_onnx, device="cpu").predict(preprocess(png.read_bytes())[None]).labels[0])

    with sync_playwright() as p:
        browser = launch(p)
        page = browser.new_page(viewport={"width": 1000, "height": 620})
        page.goto(service_url + "/ui/")
        assert page.locator("#label").inner_text() == "–"
        page.set_input_files("#file", str(png))
        page.wait_for_function("document.getElementById('label').textContent !== '–'", timeout=30_000)
        assert page.locator("#label").inner_text() == str(expected)
        assert page.locator(".bar").count() == 10
        assert page.locator(".bar.win").get_attribute("data-digit") == str(expected)
        assert page.locator("#error").inner_text() == ""
        page.screenshot(path=str(os.environ.get("CAPSNET_UI_SCREENSHOT", tmp_path / "ui.png")))
        browser.close()


ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def ort_web():
    """onnxruntime-web's files for the page (`make web`: npm ci in clients/js, then a copy)."""
    if not (ROOT / "serving" / "static" / "ort" / "ort.wasm.min.mjs").exists():
        if shutil.which("npm") is None:
            pytest.skip("needs npm for onnxruntime-web")
        made = subprocess.run(["make", "web"], cwd=ROOT, capture_output=True, text=True, timeout=600)
        assert made.returncode == 0, made.stderr[-2000:]


def test_the_page_classifies_in_the_browser_as_the_server_does(service_url, ort_web, mnist_root, tmp_path):
    """Five real digits, each uploaded twice: once to the server, once run by onnxruntime-web in the page
    (no request to the server's model then); the labels agree, and the page says which ran and how long."""
    from playwright.sync_api import sync_playwright

    x, _ = read_split("test", mnist_root, 5)
    with sync_playwright() as p:
        browser = launch(p)
        page = browser.new_page(viewport={"width": 1000, "height": 620})
        predicts: list[str] = []
        page.on("request", lambda r: predicts.append(r.url) if r.url.endswith("/ui/predict") else None)
        page.goto(service_url + "/ui/")
        page.wait_for_function("!document.getElementById('inbrowser').disabled", timeout=30_000)
        for i in range(5):
            png = tmp_path / f"digit{i}.png"
            Image.fromarray((255 * x[i]).astype(np.uint8)).resize((140, 140)).save(png)
            labels = {}
            for where in ("server", "browser"):
                page.set_checked("#inbrowser", where == "browser")
                page.evaluate("document.getElementById('ran').dataset.where = ''")
                page.set_input_files("#file", [])
                page.set_input_files("#file", str(png))
                page.wait_for_function(f"document.getElementById('ran').dataset.where === '{where}'"
                                       " || document.getElementById('error').textContent !== ''", timeout=60_000)
                assert page.locator("#error").inner_text() == ""
                assert re.fullmatch(rf"ran in the {where}: \d+\.\d ms", page.locator("#ran").inner_text())
                labels[where] = page.locator("#label").inner_text()
            assert labels["server"] == labels["browser"], (i, labels)
        assert len(predicts) == 5  # the five server runs; the browser runs asked the server nothing
        page.screenshot(path=str(tmp_path / "in-browser.png"))
        browser.close()


def python_decoder():
    """The decoder in Python: PyTorch's CapsNet.decode on the published weights, which the service serves."""
    import torch

    from tests.conftest import PUBLISHED
    from training.checkpoint import load_weights

    model, _ = load_weights(PUBLISHED)
    return lambda pose, label: model.decode(torch.tensor([pose]), torch.tensor([label])).detach().numpy()[0, 0]


def test_pose_sliders_redraw_the_digit_live_as_the_python_decoder_does(service_url, ort_web, served_onnx, mnist_root,
                                                                        tmp_path):
    """A real digit uploaded (server mode): the heat overlay is drawn, 16 sliders hold the winner's pose, and moving
    one redraws the live reconstruction in the browser, with no request to the server, equal to the Python decoder's
    image for the pose the sliders show (within DECODER_TOLERANCE, 1e-5: the decoder graph is held to it against
    PyTorch at export, 1.5e-6 measured)."""
    from playwright.sync_api import sync_playwright

    decode = python_decoder()
    x, _ = read_split("test", mnist_root, 3)
    png = tmp_path / "digit.png"
    Image.fromarray((255 * x[2]).astype(np.uint8)).resize((140, 140)).save(png)
    with sync_playwright() as p:
        browser = launch(p)
        page = browser.new_page(viewport={"width": 1100, "height": 900})
        page.goto(service_url + "/ui/")
        page.wait_for_function("!document.getElementById('inbrowser').disabled", timeout=30_000)
        page.set_input_files("#file", str(png))
        page.wait_for_function("document.getElementById('live').dataset.redraws === '1'"
                               " || document.getElementById('error').textContent !== ''", timeout=60_000)
        assert page.locator("#error").inner_text() == ""
        assert page.locator("#pose input[type=range]").count() == 16
        heat = np.array(page.evaluate("Array.from(document.getElementById('heat').getContext('2d')"
                                      ".getImageData(0, 0, 28, 28).data)")).reshape(28, 28, 4)
        assert (heat[..., 0] > heat[..., 1] + 50).sum() > 20  # red where the routing went, not a blank canvas
        first = page.evaluate("window.capsnetLive")
        label = int(page.locator("#label").inner_text())
        assert first["label"] == label
        assert np.abs(np.array(first["pixels"]).reshape(28, 28) - decode(first["pose"], label)).max() < DECODER_TOLERANCE
        requests: list[str] = []
        page.on("request", lambda r: requests.append(r.url))
        slider = page.locator('#pose input[data-dim="5"]')
        value = float(slider.get_attribute("max"))
        page.evaluate("([v]) => { const s = document.querySelector('#pose input[data-dim=\"5\"]'); s.value = v;"
                      " s.dispatchEvent(new Event('input')); }", [str(value)])
        page.wait_for_function("document.getElementById('live').dataset.redraws === '2'", timeout=30_000)
        moved = page.evaluate("window.capsnetLive")
        assert abs(moved["pose"][5] - first["pose"][5] - 0.25) < 0.006 and moved["pose"][:5] == first["pose"][:5]
        want = decode(moved["pose"], label)
        got = np.array(moved["pixels"]).reshape(28, 28)
        assert np.abs(got - want).max() < DECODER_TOLERANCE
        assert np.abs(got - np.array(first["pixels"]).reshape(28, 28)).max() > 0.02  # the digit did change
        assert requests == []  # the redraw ran in the browser
        page.screenshot(path=str(os.environ.get("CAPSNET_EXPLAIN_SCREENSHOT", tmp_path / "explain.png")), full_page=True)
        browser.close()
