"""The published ONNX files in other runtimes, measured against ONNX Runtime (Python, CPU).

For each variant (fp32, int8, fp16) and runtime (ONNX Runtime, OpenVINO, onnxruntime-node): whether it
loads, the largest |d lengths| against ONNX Runtime and the argmax agreement on the first 1,000 test
digits, the accuracy on all 10,000, and images/s at batch 1 and 64 on this machine. Prints a Markdown
table and writes it with the numbers to docs/runtimes.json.

    python scripts/runtimes.py [--digits 10000] [--out docs/runtimes.json]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Callable

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from export.artifact import VARIANTS, variant_path  # noqa: E402
from mnist import read_split  # noqa: E402
from serving.sessions import create_session  # noqa: E402
from timing import images_per_s  # noqa: E402

MODEL = ROOT / "models" / "capsnet-mnist.onnx"
NODE_SCRIPT = ROOT / "clients" / "js" / "classify.mjs"
AGREEMENT_DIGITS = 1000
CHUNK = 250  # images per run when scoring: the routing tensors of 10,000 digits at once would need GBs
OPENVINO_CONFIG = {"INFERENCE_PRECISION_HINT": "f32"}  # its default on a CPU with bf16 or fp16 is lower
RUNTIMES = ("onnxruntime", "openvino", "openvino (default precision)", "onnxruntime-node")
SETTINGS = {"onnxruntime": "CPUExecutionProvider", "openvino": "CPU, INFERENCE_PRECISION_HINT=f32",
            "openvino (default precision)": "CPU, no hint", "onnxruntime-node": "executionProviders: ['cpu']"}

Lengths = Callable[[np.ndarray], np.ndarray]  # (N, 1, 28, 28) float32 -> (N, 10)


def in_chunks(run: Lengths, images: np.ndarray) -> np.ndarray:
    return np.concatenate([run(images[i:i + CHUNK]) for i in range(0, len(images), CHUNK)])


def rate(run: Lengths, images: np.ndarray, batch: int, seconds: float = 3.0) -> int:
    return round(images_per_s(run, images[:batch], seconds))


def onnxruntime_lengths(path: Path) -> Lengths:
    session = create_session(path, "cpu")
    return lambda x: session.run(["lengths"], {"image": x})[0]


def openvino_lengths(path: Path, config: dict[str, str]) -> Lengths:
    import openvino as ov

    compiled = ov.Core().compile_model(str(path), "CPU", config)
    output = compiled.output("lengths")
    return lambda x: compiled(x)[output]


def node_results(path: Path, images: np.ndarray) -> tuple[np.ndarray, dict[str, int]]:
    """Lengths (chunked by the script's caller: one run per CHUNK) and images/s from onnxruntime-node."""
    with tempfile.TemporaryDirectory() as tmp:
        lengths = []
        for i in range(0, len(images), CHUNK):
            digits = Path(tmp) / "digits.f32"
            images[i:i + CHUNK].astype("<f4").tofile(digits)
            lengths.append(np.array(node(path, digits)["lengths"], dtype=np.float32))
        images[:64].astype("<f4").tofile(Path(tmp) / "speed.f32")
        speed = node(path, Path(tmp) / "speed.f32", "--speed")["images_per_s"]
    return np.concatenate(lengths), speed


def node(*args: Path | str) -> dict:
    run = subprocess.run(["node", str(NODE_SCRIPT), *map(str, args)], capture_output=True, text=True, timeout=600)
    if run.returncode != 0:
        raise RuntimeError(f"onnxruntime-node: {run.stderr.strip()[-500:]}")
    return json.loads(run.stdout)


def measure(digits: int) -> list[dict]:
    images, labels = read_split("test", ROOT / "data", digits)
    images = images[:, None]
    rows = []
    for variant in VARIANTS:
        path = variant_path(MODEL, variant)
        reference = in_chunks(onnxruntime_lengths(path), images)
        for runtime in RUNTIMES:
            if runtime == "openvino (default precision)" and variant != "fp32":
                continue
            row: dict = {"variant": variant, "runtime": runtime, "file": path.name}
            try:
                if runtime == "onnxruntime-node":
                    lengths, speed = node_results(path, images)
                else:
                    run = (onnxruntime_lengths(path) if runtime == "onnxruntime" else
                           openvino_lengths(path, OPENVINO_CONFIG if runtime == "openvino" else {}))
                    lengths = in_chunks(run, images)
                    speed = {str(b): rate(run, images, b) for b in (1, 64)}
            except Exception as err:  # noqa: BLE001 - a runtime that cannot load the file is a result
                rows.append({**row, "loads": False, "error": str(err)[:300]})
                continue
            first = slice(0, AGREEMENT_DIGITS)
            row.update({
                "loads": True,
                "max_abs_diff_lengths": float(np.abs(lengths[first] - reference[first]).max()),
                "argmax_agreement": float(np.mean(lengths[first].argmax(1) == reference[first].argmax(1))),
                "accuracy": float(np.mean(lengths.argmax(1) == labels)),
                "digits": len(labels),
                "images_per_s": {str(k): v for k, v in speed.items()},
                "settings": SETTINGS[runtime],
            })
            rows.append(row)
            print(f"{variant:5} {runtime:28} d={row['max_abs_diff_lengths']:.1e} acc={row['accuracy']:.2%}",
                  file=sys.stderr)
    return rows


def markdown(rows: list[dict]) -> str:
    lines = ["| variant | runtime | loads | max abs diff of lengths vs ONNX Runtime (1,000 digits) | argmax agreement |"
             " accuracy (10,000) | images/s, batch 1 | images/s, batch 64 | settings |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if not r["loads"]:
            lines.append(f"| {r['variant']} | {r['runtime']} | no: {r['error']} | | | | | | |")
            continue
        lines.append(f"| {r['variant']} | {r['runtime']} | yes | {r['max_abs_diff_lengths']:.1e} |"
                     f" {r['argmax_agreement']:.1%} | {r['accuracy']:.2%} | {r['images_per_s']['1']:,} |"
                     f" {r['images_per_s']['64']:,} | {r['settings']} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--digits", type=int, default=10_000, help="test digits scored for the accuracy")
    p.add_argument("--out", type=Path, default=ROOT / "docs" / "runtimes.json", help="where the numbers go")
    args = p.parse_args(argv)
    rows = measure(args.digits)
    table = markdown(rows)
    args.out.write_text(json.dumps({"rows": rows, "table": table}, indent=1) + "\n")
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
