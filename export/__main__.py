"""python -m export: checkpoint -> artifacts/capsnet.onnx, verified against PyTorch, its int8 and fp16 variants, the
decoder alone (capsnet-decoder.onnx), the verification record, a model card written from it (capsnet.card.md) and a
Triton model repository: the model folder every later stage takes (CAPSNET_MODEL)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from export.onnx_export import DEFAULT_OPSET, VerificationError, export_and_verify, report_path
from export.artifact import VARIANTS
from export.batchsize import SECONDS_PER_BATCH
from export.card import write_card
from export.triton import write_repository
from mnist import DEFAULT_ROOT
from timing import cpu


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m export", description=__doc__,
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--checkpoint", type=Path, default=Path("models/capsnet-mnist.safetensors"),
                   help="weights (.safetensors with its .json sidecar)")
    p.add_argument("--out", type=Path, default=Path("artifacts/capsnet.onnx"), help="ONNX file to write")
    p.add_argument("--opset", type=int, default=DEFAULT_OPSET, help="ONNX opset")
    p.add_argument("--verify-digits", type=int, default=1000, help="test digits compared with PyTorch")
    p.add_argument("--accuracy-digits", type=int, default=None, help="test digits for the ORT accuracy (all: 10,000)")
    p.add_argument("--data", type=Path, default=DEFAULT_ROOT, help="MNIST root folder")
    p.add_argument("--variants", nargs="*", choices=VARIANTS[1:], default=list(VARIANTS[1:]),
                   help="variants written beside --out as capsnet-<variant>.onnx (none: --variants with no value)")
    p.add_argument("--batch-seconds", type=float, default=SECONDS_PER_BATCH,
                   help="seconds each batch size is timed for the stored cpu_best_batch (the service's merge cap)")
    args = p.parse_args(argv)
    try:
        report = export_and_verify(args.checkpoint, args.out, args.opset, args.verify_digits,
                                   args.accuracy_digits, args.data, tuple(args.variants), args.batch_seconds)
    except VerificationError as err:
        print(f"export FAILED verification: {err}", file=sys.stderr)
        return 1
    for name, diffs in {**report["onnxruntime"], "onnx_reference": report["onnx_reference"]}.items():
        print(f"{name:>14}: " + "  ".join(f"{k}={v:.3g}" for k, v in diffs.items()))
    print(f"test accuracy through ONNX Runtime: {report['test_accuracy_ort']:.4%} on {report['test_digits']:,} digits")
    best = {"fp32": report["metadata"]["cpu_best_batch"],
            **{name: v["cpu_best_batch"] for name, v in report["variants"].items()}}
    print("fastest batch size on this CPU (the service's cap on merged batches): "
          + ", ".join(f"{name} {batch}" for name, batch in best.items()))
    print(f"decoder: max |d reconstruction| {report['decoder']['max_abs_diff_winner_poses']:.3g} on the winners' poses,"
          f" {report['decoder']['max_abs_diff_moved_poses']:.3g} on poses moved by up to 0.25 -> {report['decoder']['onnx']}")
    for name, v in report["variants"].items():
        verdict = "meets" if v["meets_accuracy_bar"] else "MISSES"
        print(f"{name} variant: {v['test_accuracy_ort']:.4%} (loss against fp32: {v['accuracy_loss_points']:.2f} points;"
              f" {verdict} the {v['accuracy_bar_points']}-point bar; routing map within"
              f" {v['against_torch']['max_abs_diff_routing_map']:.2g} of PyTorch) -> {v['onnx']}")
    triton = write_repository(args.out, args.out.parent / "triton")
    command = "python -m export " + " ".join(argv if argv is not None else sys.argv[1:])
    written = write_card(args.out, report, cpu(), command)
    print(f"wrote {args.out}, {report_path(args.out)} and {written} ({report['seconds']} s); a Triton model"
          f" repository in {triton.parent}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
