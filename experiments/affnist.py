"""Do capsules recognise turned digits? The paper's affNIST setup: `python -m experiments.affnist --help`.

The seed says capsule networks identify an object "no matter what orientation it is in"; the paper's
test: trained only on MNIST digits placed at random on a 40x40 canvas, CapsNet reached 79% on affNIST
against a CNN's 66%. Here CapsNet and the CNN baseline (training/baseline.py, its classifier grown for
the 40x40 input) are trained the same way (`python -m training --canvas 40 --shift 6`: every digit
anywhere on the canvas), with the same schedule, fixed in advance, and their last weights are scored
once on the MNIST test digits placed at random on 40x40 (seeded) and on the affNIST-like test set
(training/canvas.py: each test digit under its own random affine transform in affNIST's documented
ranges, seeded). Nothing is selected. The CapsNet then goes through the pipeline on 40x40
(experiments/pipeline.py): exported and verified, served from the ONNX file, asked about affNIST-like digits.

--schedule quick is a short CPU schedule that proves the path end to end: its numbers are not a result. The full
schedule is a step of the GPU session (scripts/gpu-run.sh). Both resume where they stopped.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from training import train  # noqa: E402
from training.canvas import AFFNIST, affnist_like, random_placement  # noqa: E402
from training.checkpoint import load_weights, write_json  # noqa: E402
from training.data import load_split  # noqa: E402
from experiments.pipeline import experiment_parser, export_serve_answer, figure_title  # noqa: E402
from timing import describe_cpu  # noqa: E402

ARCHS = ("capsnet", "cnn")
CANVAS = AFFNIST["canvas"]
SHIFT = (CANVAS - 28) // 2  # 6: a digit anywhere on the canvas
TEST_SEEDS = {"affnist_like": 0, "placed": 1}
# Fixed before any score was seen; the full one runs on the GPU, the quick one proves the path on the CPU.
SCHEDULES = {
    "full": {"epochs": 15, "limit": None, "lr_decay": 0.9, "test_digits": None, "device": "auto", "val": 1000},
    "quick": {"epochs": 2, "limit": 3000, "lr_decay": 0.9, "test_digits": 500, "device": "cpu", "val": 200},
    "smoke": {"epochs": 1, "limit": 32, "lr_decay": 0.9, "test_digits": 32, "device": "cpu", "val": 32},
}


def train_args(arch: str, schedule: dict, folder: Path, data: Path, seed: int, threads: int | None) -> list[str]:
    return ["--arch", arch, "--canvas", str(CANVAS), "--shift", str(SHIFT), "--epochs", str(schedule["epochs"]),
            "--lr-decay", str(schedule["lr_decay"]), "--val", str(schedule["val"]), "--seed", str(seed), "--no-test",
            "--resume", "--quiet", "--device", schedule["device"], "--data", str(data), "--out", str(folder),
            *(["--limit", str(schedule["limit"])] if schedule["limit"] else []),
            *(["--threads", str(threads)] if threads else [])]


def test_sets(data: Path, limit: int | None) -> tuple[dict[str, torch.Tensor], torch.Tensor, dict]:
    """The two 40x40 test sets made from the MNIST test digits, their labels, and the affine parameters drawn."""
    x, y = load_split("test", data, limit)
    turned, params = affnist_like(x, TEST_SEEDS["affnist_like"])
    return {"placed": random_placement(x, CANVAS, TEST_SEEDS["placed"]), "affnist_like": turned}, y, params


def plot(sets: dict[str, torch.Tensor], scores: dict[str, dict[str, float]], out: Path, schedule: str) -> None:
    fig = plt.figure(figsize=(9, 3.2))
    for k in range(8):
        ax = fig.add_subplot(2, 12, k + 1 if k < 4 else k + 9)
        ax.imshow(sets["affnist_like"][k, 0].numpy(), cmap="gray", vmin=0, vmax=1)
        ax.axis("off")
    ax = fig.add_axes([0.5, 0.12, 0.48, 0.75])
    for k, name in enumerate(sets):
        values = [100 * scores[arch][name] for arch in ARCHS]
        bars = ax.bar(np.arange(2) + 0.38 * k, values, 0.36, label={"placed": "MNIST placed on 40x40",
                                                                     "affnist_like": "affNIST-like"}[name])
        for b, v in zip(bars, values):
            ax.text(b.get_x() + b.get_width() / 2, v, f"{v:.1f}", ha="center", va="bottom", fontsize=8)
    ax.set_xticks(np.arange(2) + 0.19, ["CapsNet", "CNN baseline"])
    ax.set_ylabel("test accuracy (%)")
    ax.set_ylim(0, 105)
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.1), ncol=2)
    ax.set_title(figure_title(schedule, "trained on MNIST on 40x40 only"), fontsize=9)
    fig.savefig(out, dpi=110, bbox_inches="tight")
    plt.close(fig)


def build_parser() -> argparse.ArgumentParser:
    return experiment_parser("affnist", __doc__.splitlines()[0], list(SCHEDULES))


def main(argv: list[str] | None = None) -> dict:
    args = build_parser().parse_args(argv)
    schedule = SCHEDULES[args.schedule]
    runs = args.runs / args.schedule
    sets, labels, params = test_sets(args.data, schedule["test_digits"])
    report: dict = {"claim": "capsules recognise digits under affine transforms they were not trained on",
                    "schedule": {"name": args.schedule, **schedule, "canvas": CANVAS, "shift_px": SHIFT,
                                 "seed": args.seed, "selection": "none: the last weights"},
                    "final": args.schedule == "full",
                    "test_sets": {"digits": len(labels), "seeds": TEST_SEEDS, "affine_ranges": AFFNIST,
                                  "drawn": {k: [round(v.min().item(), 3), round(v.max().item(), 3)]
                                            for k, v in params.items()}},
                    "accuracy": {}, "runs": {}, "cpu": describe_cpu()}
    for arch in ARCHS:
        folder = runs / arch
        started = time.time()
        train.main(train_args(arch, schedule, folder, args.data, args.seed, args.threads))
        model, info = load_weights(folder / train.WEIGHTS)
        report["accuracy"][arch] = {name: train.accuracy(model, images, labels) for name, images in sets.items()}
        report["runs"][arch] = {"epochs": info["epoch"], "train_images": info["train_images"],
                                "device": info["device"], "seconds_this_call": round(time.time() - started, 1),
                                "command": info["command"]}
        print(f"{arch}: {report['accuracy'][arch]}", file=sys.stderr)
    if not args.no_serve:
        report["pipeline"] = export_serve_answer(runs / "capsnet" / train.WEIGHTS, runs / "capsnet.onnx",
                                                 sets["affnist_like"], args.data)
    name = "affnist" if args.schedule == "full" else f"affnist-{args.schedule}"
    args.out.mkdir(parents=True, exist_ok=True)
    plot(sets, report["accuracy"], args.out / f"{name}.png", args.schedule)
    write_json(args.out / f"{name}.json", report)
    print(json.dumps(report["accuracy"], indent=2))
    return report


if __name__ == "__main__":
    main()
