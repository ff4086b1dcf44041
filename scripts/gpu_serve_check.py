"""One check of GPU serving, for scripts/gpu-run.sh: start the service on a device, read /metadata, send real
digits as raw float32 and compare the labels with in-process ONNX Runtime on the CPU, same variant.

    python scripts/gpu_serve_check.py --device cuda --variant fp16 --out OUT [--digits 1024]

Writes OUT/serving.json; exits 1 when the service does not run on the asked device's provider or a label
differs.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from loadtest.server import running_service  # noqa: E402
from mnist import DEFAULT_ROOT, read_split  # noqa: E402
from serving.runtime import CapsNetRuntime  # noqa: E402

PROVIDER = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider"}


def check(device: str, variant: str, digits: int, data: Path, model: Path, out: Path) -> dict:
    images, _ = read_split("test", data, digits)
    expected = CapsNetRuntime(model, device="cpu", variant=variant).predict(images[:, None])
    env = {"CAPSNET_MODEL": str(model.resolve()), "CAPSNET_DEVICE": device, "CAPSNET_VARIANT": variant}
    with running_service(env=env, log=out / "serving-service.log") as service, \
            httpx.Client(base_url=service.url, timeout=120) as client:
        metadata = client.post("/metadata", json={}).json()
        labels, lengths, started = [], [], time.perf_counter()
        for i in range(0, digits, 64):
            answer = client.post("/classify", content=images[i:i + 64].astype("<f4").tobytes(),
                                 headers={"Content-Type": "application/octet-stream"}).json()
            labels += answer["labels"]
            lengths += answer["lengths"]
        seconds = time.perf_counter() - started
    return {"device": device, "variant": variant, "metadata": metadata, "digits": digits,
            "labels_agree_with_cpu": int(np.sum(np.array(labels) == expected.labels)),
            "max_abs_diff_lengths_vs_cpu": float(np.abs(np.array(lengths) - expected.lengths).max()),
            "sequential_images_per_s": round(digits / seconds, 1),
            "ok": metadata["providers"][0] == PROVIDER[device] and metadata["variant"] == variant
            and bool(np.array_equal(labels, expected.labels))}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--device", choices=sorted(PROVIDER), default="cuda", help="CAPSNET_DEVICE of the service")
    p.add_argument("--variant", default="fp16", help="CAPSNET_VARIANT of the service and of the CPU reference")
    p.add_argument("--digits", type=int, default=1024, help="MNIST test digits sent")
    p.add_argument("--model", type=Path, default=Path("models/capsnet-mnist.onnx"), help="fp32 ONNX file")
    p.add_argument("--data", type=Path, default=DEFAULT_ROOT, help="MNIST root folder")
    p.add_argument("--out", type=Path, required=True, help="folder for serving.json")
    args = p.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    result = check(args.device, args.variant, args.digits, args.data, args.model, args.out)
    (args.out / "serving.json").write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "metadata"}))
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
