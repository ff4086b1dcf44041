"""The two Bentos differ only in their ONNX Runtime. The CPU Bento built and served without torch, in its image:
tests/test_container.py."""

from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


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
