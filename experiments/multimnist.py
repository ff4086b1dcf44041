"""Can capsules name two overlapping digits? The paper's MultiMNIST: `python -m experiments.multimnist --help`.

The seed says capsule networks are "better able to identify multiple, overlapping objects"; the paper
(section 6): on MultiMNIST (two digits of different classes, each shifted by up to 4 pixels, on 36x36)
CapsNet named both digits with 5.2% error against 8.1% for its CNN baseline. Here:

- CapsNet (36x36) is trained with the margin loss on both classes present and reconstructs each digit
  from its own capsule (the decoder masked by that class, against that digit alone); it names the two
  longest capsules.
- The CNN baseline (training/baseline.py, the paper's baseline layers, its classifier grown for 36x36)
  is trained with one sigmoid per class (binary cross-entropy on both classes present); it names its
  two highest outputs.

Both see the same fresh pairs each epoch (drawn from the training digits, seeded by epoch) with the same
optimizer and schedule, fixed in advance; their last weights are scored once on a fixed, seeded set of
test pairs (both names right = correct). Nothing is selected. The figure shows test pairs with
CapsNet's two reconstructions. The CapsNet then goes through the pipeline on 36x36 (experiments/pipeline.py).

--schedule quick is a short CPU schedule that proves the path: its numbers are not a result. The full
schedule is a step of the GPU session (scripts/gpu-run.sh). Training resumes after its last epoch.
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
import torch.nn.functional as F  # noqa: E402
from tqdm import tqdm  # noqa: E402

from training.baseline import BaselineCNN, BaselineConfig  # noqa: E402
from training.canvas import MULTI, multimnist_like  # noqa: E402
from training.checkpoint import load_state, load_weights, save_state, save_weights, write_json  # noqa: E402
from training.data import load_split  # noqa: E402
from training.model import CapsNet, CapsNetConfig, margin_loss, reconstruction_loss  # noqa: E402
from experiments.pipeline import experiment_parser, export_serve_answer, figure_title  # noqa: E402
from training.train import STATE, WEIGHTS, pick_device  # noqa: E402
from timing import describe_cpu  # noqa: E402

ARCHS = ("capsnet", "cnn")
CANVAS = MULTI["canvas"]
TEST_SEED = 12345  # the test pairs; training pairs are seeded by (seed, epoch)
# Fixed before any score was seen; the full one runs on the GPU, the quick one proves the path on the CPU.
SCHEDULES = {
    "full": {"epochs": 10, "pairs_per_epoch": 60_000, "test_pairs": 10_000, "lr_decay": 0.9, "device": "auto"},
    "quick": {"epochs": 2, "pairs_per_epoch": 3_000, "test_pairs": 500, "lr_decay": 0.9, "device": "cpu"},
    "smoke": {"epochs": 1, "pairs_per_epoch": 32, "test_pairs": 32, "lr_decay": 0.9, "device": "cpu"},
}
BATCH_SIZE, LR = 128, 1e-3


def build(arch: str) -> CapsNet | BaselineCNN:
    if arch == "cnn":
        return BaselineCNN(BaselineConfig(image_size=CANVAS))
    return CapsNet(CapsNetConfig(image_size=CANVAS))


def two_hot(labels: torch.Tensor) -> torch.Tensor:
    """(B, 2) classes -> (B, 10) with a 1 at both."""
    return F.one_hot(labels, 10).amax(1).float()


def loss_of(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, parts: torch.Tensor) -> torch.Tensor:
    if isinstance(model, CapsNet):
        lengths, poses, first = model(images, labels[:, 0])  # the decoder on the first digit's capsule
        second = model.decoder(poses, labels[:, 1])  # and on the second's
        return (margin_loss(lengths, two_hot(labels))
                + reconstruction_loss(first, parts[:, 0]) + reconstruction_loss(second, parts[:, 1]))
    return F.binary_cross_entropy_with_logits(model(images), two_hot(labels))


@torch.no_grad()
def both_named(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, batch: int = 250) -> float:
    """Share of images whose two highest class scores are exactly their two classes."""
    model.eval()
    correct = 0
    for i in range(0, len(images), batch):
        out = model(images[i:i + batch])
        scores = out[0] if isinstance(out, tuple) else out
        named = scores.topk(2, dim=1).indices.sort(1).values
        correct += (named == labels[i:i + batch].sort(1).values).all(1).sum().item()
    return correct / len(images)


def train_one(arch: str, schedule: dict, folder: Path, x: torch.Tensor, y: torch.Tensor, seed: int,
              device: torch.device) -> dict:
    """Train (or resume) one model; every epoch's weights and state are saved, so a stop loses one epoch at most."""
    torch.manual_seed(seed)
    model = build(arch).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=LR)
    scheduler = torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=schedule["lr_decay"])
    start = 1
    if (folder / STATE).exists():
        state = load_state(folder / STATE, device)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        start = state["epoch"] + 1
    folder.mkdir(parents=True, exist_ok=True)
    record: dict = {}
    for epoch in range(start, schedule["epochs"] + 1):
        t0 = time.time()
        images, labels, parts = multimnist_like(x, y, schedule["pairs_per_epoch"],
                                                torch.Generator().manual_seed(seed * 100_003 + epoch))
        model.train()
        total = 0.0
        for i in tqdm(range(0, len(images), BATCH_SIZE), desc=f"{arch} epoch {epoch}", leave=False):
            batch = [t[i:i + BATCH_SIZE].to(device) for t in (images, labels, parts)]
            loss = loss_of(model, *batch)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += loss.item() * len(batch[0])
        scheduler.step()
        record = {"epoch": epoch, "train_loss": total / len(images), "epoch_seconds": round(time.time() - t0, 1)}
        print(json.dumps({"arch": arch, **record}), file=sys.stderr)
        save_weights(folder / WEIGHTS, model, {"epoch": epoch, "metrics": record, "seed": seed,
                                               "task": "multimnist", "pairs_per_epoch": schedule["pairs_per_epoch"],
                                               "device": str(device), "torch": torch.__version__})
        save_state(folder / STATE, {"epoch": epoch, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                                    "scheduler": scheduler.state_dict()})
    return record


@torch.no_grad()
def plot(model: CapsNet, images: torch.Tensor, labels: torch.Tensor, out: Path, schedule: str, count: int = 8) -> None:
    """Test pairs (top) and CapsNet's two reconstructions from its two longest capsules, red and green (bottom)."""
    model.eval()
    lengths, poses, _ = model(images[:count])
    named = lengths.topk(2, dim=1).indices
    fig, axes = plt.subplots(2, count, figsize=(count * 1.1, 2.6))
    for i in range(count):
        first = model.decoder(poses[i:i + 1], named[i:i + 1, 0])[0, 0]
        second = model.decoder(poses[i:i + 1], named[i:i + 1, 1])[0, 0]
        colour = torch.stack([first, second, torch.zeros_like(first)], -1).clamp(0, 1)
        axes[0, i].imshow(images[i, 0].numpy(), cmap="gray", vmin=0, vmax=1)
        axes[0, i].set_title(f"{labels[i, 0].item()}+{labels[i, 1].item()}", fontsize=8)
        axes[1, i].imshow(colour.numpy())
        axes[1, i].set_title(f"R:{named[i, 0].item()} G:{named[i, 1].item()}", fontsize=8)
        for row in range(2):
            axes[row, i].axis("off")
    fig.suptitle(figure_title(schedule, "MultiMNIST-like test pairs (true classes) and CapsNet's two reconstructions"),
                 fontsize=9)
    fig.savefig(out, dpi=110, bbox_inches="tight")
    plt.close(fig)


def build_parser() -> argparse.ArgumentParser:
    return experiment_parser("multimnist", __doc__.splitlines()[0], list(SCHEDULES))


def main(argv: list[str] | None = None) -> dict:
    args = build_parser().parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    schedule = SCHEDULES[args.schedule]
    device = pick_device(schedule["device"])
    runs = args.runs / args.schedule
    x, y = load_split("train", args.data)
    x_test, y_test = load_split("test", args.data)
    test_images, test_labels, _ = multimnist_like(x_test, y_test, schedule["test_pairs"],
                                                  torch.Generator().manual_seed(TEST_SEED))
    report: dict = {"claim": "capsules name both of two overlapping digits better than a CNN",
                    "schedule": {"name": args.schedule, **schedule, "batch_size": BATCH_SIZE, "optimizer": "Adam, lr 1e-3",
                                 "seed": args.seed, "selection": "none: the last weights"},
                    "final": args.schedule == "full", "pairs": {**MULTI, "test_pairs": len(test_labels),
                                                                "test_seed": TEST_SEED},
                    "accuracy_both_named": {}, "runs": {}, "cpu": describe_cpu()}
    for arch in ARCHS:
        folder = runs / arch
        started = time.time()
        train_one(arch, schedule, folder, x.to(device), y.to(device), args.seed, device)
        model, info = load_weights(folder / WEIGHTS)
        report["accuracy_both_named"][arch] = both_named(model, test_images, test_labels)
        report["runs"][arch] = {"epochs": info["epoch"], "device": info["device"], "last_epoch": info.get("metrics"),
                                "seconds_this_call": round(time.time() - started, 1)}
        print(f"{arch}: both named on {report['accuracy_both_named'][arch]:.2%} of the test pairs", file=sys.stderr)
    name = "multimnist" if args.schedule == "full" else f"multimnist-{args.schedule}"
    args.out.mkdir(parents=True, exist_ok=True)
    capsnet, _ = load_weights(runs / "capsnet" / WEIGHTS)
    plot(capsnet, test_images, test_labels, args.out / f"{name}.png", args.schedule)
    if not args.no_serve:
        report["pipeline"] = export_serve_answer(runs / "capsnet" / WEIGHTS, runs / "capsnet.onnx", test_images,
                                                 args.data)
        served = report["pipeline"]["served"]
        named = np.sort(np.argsort(-np.asarray(served["classify_lengths"]), 1)[:, :2], 1)  # the two longest capsules
        served["two_longest"] = named.tolist()
        served["true_pairs"] = np.sort(test_labels[:len(named)].numpy(), 1).tolist()
    write_json(args.out / f"{name}.json", report)
    print(json.dumps(report["accuracy_both_named"], indent=2))
    return report


if __name__ == "__main__":
    main()
