"""`bentoml build` packages serving/ + the ONNX artifact; the built Bento serves a real request."""

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import yaml

from export.onnx_export import report_path
from loadtest.server import running_service
from export.artifact import VARIANTS, variant_path
from mnist import read_split

ROOT = Path(__file__).resolve().parents[1]
PUBLISHED_ONNX = ROOT / "models" / "capsnet-mnist.onnx"


def test_built_bento_serves_from_a_virtualenv_without_torch(tmp_path, mnist_root):
    """Built here from the published ONNX files, then served by a new virtualenv that holds only the Bento's
    own requirements.txt."""
    context = tmp_path / "context"
    shutil.copytree(ROOT / "serving", context / "serving", ignore=shutil.ignore_patterns("__pycache__"))
    (context / "models").mkdir()
    for variant in (*VARIANTS, "decoder"):
        shutil.copy(variant_path(PUBLISHED_ONNX, variant), context / "models")
    shutil.copy(report_path(PUBLISHED_ONNX), context / "models")
    shutil.copy(ROOT / "models" / "README.md", context / "models" / "README.md")
    shutil.copy(ROOT / "bentofile.yaml", context / "bentofile.yaml")
    (context / "deploy" / "container").mkdir(parents=True)
    shutil.copy(ROOT / "deploy" / "container" / "Dockerfile.j2", context / "deploy" / "container" / "Dockerfile.j2")
    env = {"BENTOML_HOME": str(tmp_path / "bentoml-home"), "BENTOML_DO_NOT_TRACK": "True"}
    build = subprocess.run([sys.executable, "-m", "bentoml", "build"], cwd=context, capture_output=True, text=True,
                           env={**os.environ, **env}, timeout=300)
    assert build.returncode == 0, build.stdout[-2000:] + build.stderr[-2000:]
    tag = re.search(r'Bento\(tag="([^"]+)"\)', build.stdout).group(1)
    bento = tmp_path / "bentoml-home" / "bentos" / tag.replace(":", "/")
    files = {str(p.relative_to(bento / "src")) for p in (bento / "src").rglob("*") if p.is_file()}
    assert {"serving/service.py", "serving/runtime.py", "serving/static/index.html",
            "models/capsnet-mnist.onnx", "models/capsnet-mnist-int8.onnx", "models/capsnet-mnist-fp16.onnx",
            "models/capsnet-mnist-decoder.onnx",
            "models/README.md"} <= files
    requirements = (bento / "env" / "python" / "requirements.txt").read_text()
    assert "onnxruntime==1.31.1" in requirements and "onnxruntime-gpu" not in requirements  # the CPU Bento
    assert not re.search(r"^torch", requirements, re.M)
    assert yaml.safe_load((bento / "bento.yaml").read_text())["service"] == "serving.service:CapsNet"

    venv = tmp_path / "bento-venv"
    install = subprocess.run(f"{sys.executable} -m venv {venv} && {venv}/bin/pip install -q -r"
                             f" {bento / 'env' / 'python' / 'requirements.txt'}", shell=True, capture_output=True,
                             text=True, timeout=900)
    assert install.returncode == 0, install.stderr[-3000:]
    no_torch = subprocess.run([str(venv / "bin" / "python"), "-c", "import torch"], capture_output=True, text=True)
    assert "No module named 'torch'" in no_torch.stderr

    x, _ = read_split("test", mnist_root, 2)
    with running_service(target=tag, env=env, python=str(venv / "bin" / "python")) as served:
        url = served.url
        r = httpx.post(url + "/classify", content=json.dumps({"images": x.tolist()}),
                       headers={"Content-Type": "application/json"}, timeout=60)
        assert r.status_code == 200 and len(r.json()["labels"]) == 2
        meta = httpx.post(url + "/metadata", json={}, timeout=60).json()
        assert json.loads(report_path(PUBLISHED_ONNX).read_text())["variants"]["int8"]["meets_accuracy_bar"]
        assert meta["model_file"] == "capsnet-mnist-int8.onnx"  # the CPU default
        assert meta["warnings"] == []


def test_the_gpu_bento_differs_from_the_cpu_bento_only_in_its_onnx_runtime():
    cpu = yaml.safe_load((ROOT / "bentofile.yaml").read_text())
    gpu = yaml.safe_load((ROOT / "bentofile.gpu.yaml").read_text())
    assert (cpu["name"], gpu["name"]) == ("capsnet", "capsnet-gpu")
    assert "onnxruntime==1.31.1" in cpu["python"]["packages"]
    assert "onnxruntime-gpu[cuda,cudnn]==1.31.1" in gpu["python"]["packages"]
    others = [p for p in cpu["python"]["packages"] if not p.startswith("onnxruntime")]
    assert others == [p for p in gpu["python"]["packages"] if not p.startswith("onnxruntime")]
    for key in ("service", "include", "envs", "docker"):
        assert cpu[key] == gpu[key], key
    assert (ROOT / cpu["docker"]["dockerfile_template"]).exists()
