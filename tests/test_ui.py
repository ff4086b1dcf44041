"""The page at /ui in real headless Chromium (Debian's chromium, driven by Playwright)."""

import os
import shutil

import numpy as np
import pytest
from PIL import Image

from serving.preprocess import preprocess
from serving.runtime import CapsNetRuntime
from training.data import load_split

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None and not os.environ.get("CI"),
                                reason="Debian's chromium is not installed (CI installs it)")


def test_upload_a_real_digit_and_read_the_label(service_url, served_onnx, mnist_root, tmp_path):
    from playwright.sync_api import sync_playwright

    x, _ = load_split("test", mnist_root, 5)
    png = tmp_path / "digit.png"
    Image.fromarray((255 * x[4, 0].numpy()).astype(np.uint8)).resize((140, 140)).save(png)
    expected = int(CapsNetRuntime(served_onnx, device="cpu").predict(preprocess(png.read_bytes())[None]).labels[0])

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
            "--disable-sync", "--no-first-run"])
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
