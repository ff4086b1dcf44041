"""The model card of an exported model, written from what the export measured: `<name>.card.md` beside the fp32 file.

Every figure in it comes from the verification record (`<name>.verify.json`) and the files themselves: the
model's shape, each file's accuracy on the test digits through ONNX Runtime, its size and sha256, the largest
differences from PyTorch, the batch size the service merges requests up to, and the CPU all that was measured on.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from timing import describe_cpu
from training.checkpoint import sha256_file as sha256


def card_path(fp32: Path) -> Path:
    return fp32.with_suffix(".card.md")


def card(fp32: Path, report: dict[str, Any], cpu: dict[str, Any], command: str) -> str:
    """The card's Markdown for the fp32 file `fp32` and its verification report."""
    meta = report["metadata"]
    config = meta["config"] if isinstance(meta["config"], dict) else json.loads(meta["config"])
    size = config.get("image_size", 28)
    rows = [("fp32", fp32, report["test_accuracy_ort"], "", meta.get("cpu_best_batch", ""))]
    for name, v in report["variants"].items():
        rows.append((name, fp32.with_name(Path(v["onnx"]).name), v["test_accuracy_ort"],
                     f"{v['accuracy_loss_points']:.2f} points ({'meets' if v['meets_accuracy_bar'] else 'MISSES'} its"
                     f" {v['accuracy_bar_points']}-point bar)", v.get("cpu_best_batch", "")))
    decoder = fp32.with_name(Path(report["decoder"]["onnx"]).name)
    lines = [
        f"# {meta.get('model_name', fp32.stem)}: model card",
        "",
        f"Written by `{command}` on {time.strftime('%Y-%m-%d')}, on {describe_cpu(cpu)}, from"
        f" `{meta['source_weights']}` (sha256 {meta['source_sha256'][:12]}): every figure below is in"
        f" `{fp32.with_suffix('.verify.json').name}`, or read from the files.",
        "",
        f"CapsNet (Sabour, Frosst & Hinton 2017) on {size}x{size} images, {config.get('num_classes', 10)} classes,"
        f" {meta['routing_iterations']} routing iterations unrolled into one ONNX graph (opset {meta['opset']}).",
        "",
        f"| file | variant | test accuracy (ONNX Runtime, {report['test_digits']:,} digits) | against fp32 |"
        " merge cap on this CPU | size | sha256 |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, path, accuracy, loss, batch in rows:
        lines.append(f"| `{path.name}` | {name} | {accuracy:.2%} | {loss or '-'} | {batch or '-'} |"
                     f" {path.stat().st_size / 1e6:.1f} MB | `{sha256(path)}` |")
    lines.append(f"| `{decoder.name}` | decoder | - | - | - | {decoder.stat().st_size / 1e6:.1f} MB |"
                 f" `{sha256(decoder)}` |")
    worst = max(report["onnxruntime"].values(), key=lambda d: d["max_abs_diff_lengths"])
    lines += [
        "",
        f"Verified against PyTorch on {report['digits']:,} test digits: ONNX Runtime's lengths within"
        f" {worst['max_abs_diff_lengths']:.2g} (tolerance {report['tolerance']['lengths']:g}), ONNX's reference"
        f" evaluator's within {report['onnx_reference']['max_abs_diff_lengths']:.2g}; the decoder within"
        f" {report['decoder']['max_abs_diff_moved_poses']:.2g}. Serve it with"
        f" `make serve CAPSNET_MODEL={fp32.parent}`.",
        "",
    ]
    if "int8" in report["variants"]:
        lines[-2] += (f" int8: {report['variants']['int8'].get('recipe', 'int8 weights, 8-bit, per channel')}"
                      " (7-bit weights mean the same answers with or without VNNI; speeds differ between CPUs:"
                      " docs/export.md).")
    return "\n".join(lines)


def write_card(fp32: Path, report: dict[str, Any], cpu: dict[str, Any], command: str) -> Path:
    path = card_path(fp32)
    path.write_text(card(fp32, report, cpu, command))
    return path
