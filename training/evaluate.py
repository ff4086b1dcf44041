"""The paper's experiments on a trained CapsNet: `python -m training.evaluate --help`.

  reconstructions  test digits beside their reconstructions from the longest capsule
  perturb          each of the 16 dimensions of the winning capsule moved over [-0.25, 0.25] (Figure 4)
  routing          test accuracy with 1, 2, 3 and 5 routing iterations, same weights
  affine           accuracy on a seeded affine-distorted test set, CapsNet against the CNN baseline
  occlusion        does the routing map mean something? The primary capsules of the 6x6 cells it ranks highest,
                   lowest, or at random are silenced, and the winning capsule's length drop is measured

Each writes <name>.png and <name>.json into --out.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from training.checkpoint import load_weights, write_json  # noqa: E402
from training.data import DEFAULT_ROOT, load_split  # noqa: E402
from training.model import CapsNet, capsule_lengths  # noqa: E402
from training.train import accuracy  # noqa: E402
from timing import describe_cpu  # noqa: E402

PERTURB_STEPS = [round(-0.25 + 0.05 * k, 2) for k in range(11)]  # -0.25 ... 0.25
ROUTING_ITERS = (1, 2, 3, 5)
# The affine test set: every test digit under its own random transform, seeded.
AFFINE = {"seed": 0, "rotation_deg": 20.0, "scale": (0.8, 1.2), "shear_deg": 15.0, "shift_px": 3.0}
OCCLUDED_CELLS = (1, 3, 6, 9)  # of the 36 cells of the primary-capsule grid
OCCLUSION = {"digits": 1000, "random_draws": 5, "seed": 0}


def _save(fig, out: Path, name: str, data: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    fig.savefig(out / f"{name}.png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    write_json(out / f"{name}.json", {**data, "cpu": describe_cpu()})


@torch.no_grad()
def reconstructions(model: CapsNet, x: torch.Tensor, y: torch.Tensor, out: Path, count: int = 16) -> dict:
    lengths, _, recon = model(x[:count])
    err = ((recon - x[:count]) ** 2).flatten(1).sum(1)
    fig, axes = plt.subplots(2, count, figsize=(count * 0.8, 2))
    for i in range(count):
        for row, img in enumerate((x[i, 0], recon[i, 0])):
            axes[row, i].imshow(img.numpy(), cmap="gray", vmin=0, vmax=1)
            axes[row, i].axis("off")
        axes[0, i].set_title(f"{y[i].item()}→{lengths[i].argmax().item()}", fontsize=8)
    fig.suptitle("MNIST test digits (top, true→predicted) and reconstructions from the longest capsule (bottom)",
                 fontsize=9)
    data = {"digits": count, "labels": y[:count].tolist(), "predicted": lengths.argmax(1).tolist(),
            "sum_squared_error_per_digit": [round(v, 3) for v in err.tolist()],
            "mean_sum_squared_error": round(err.mean().item(), 3)}
    _save(fig, out, "reconstructions", data)
    return data


@torch.no_grad()
def perturb(model: CapsNet, x: torch.Tensor, y: torch.Tensor, out: Path, per_class: int = 1,
            classes: tuple[int, ...] = (0, 3, 5, 7)) -> dict:
    """For one digit of each class: 16 rows (dimensions) x 11 columns (offsets) of decoded images."""
    chosen = [int((y == c).nonzero()[0]) for c in classes][: len(classes) * per_class]
    fig, axes = plt.subplots(1, len(chosen), figsize=(len(chosen) * 4.2, 6.4))
    for ax, index in zip(np.atleast_1d(axes), chosen):
        lengths, poses, _ = model(x[index:index + 1])
        j = lengths.argmax(1).item()
        grid = []
        for d in range(model.cfg.digit_dim):
            v = poses.repeat(len(PERTURB_STEPS), 1, 1)  # (11, 10, 16)
            v[:, j, d] += torch.tensor(PERTURB_STEPS)
            grid.append(model.decoder(v, torch.full((len(PERTURB_STEPS),), j)))  # (11, 1, 28, 28)
        rows = torch.stack(grid)[:, :, 0]  # (16, 11, 28, 28)
        mosaic = rows.permute(0, 2, 1, 3).reshape(16 * 28, 11 * 28)
        ax.imshow(mosaic.numpy(), cmap="gray", vmin=0, vmax=1)
        ax.set_title(f"test digit #{index} (class {j})", fontsize=9)
        ax.set_xticks([28 * k + 14 for k in range(11)], [f"{s:+.2f}" for s in PERTURB_STEPS], fontsize=6, rotation=90)
        ax.set_yticks([28 * d + 14 for d in range(16)], [str(d) for d in range(16)], fontsize=6)
        ax.set_ylabel("capsule dimension", fontsize=8)
    fig.suptitle("Dimension perturbation: each row moves one of the 16 dimensions of the winning capsule", fontsize=10)
    data = {"test_indices": chosen, "offsets": PERTURB_STEPS, "dimensions": model.cfg.digit_dim}
    _save(fig, out, "perturb", data)
    return data


def routing(model: CapsNet, x: torch.Tensor, y: torch.Tensor, out: Path) -> dict:
    trained = model.digit_caps.iterations
    table = {}
    for r in ROUTING_ITERS:
        model.digit_caps.iterations = r
        table[str(r)] = accuracy(model, x, y)
        print(f"routing iterations {r}: test accuracy {table[str(r)]:.4%}", file=sys.stderr)
    model.digit_caps.iterations = trained
    fig, ax = plt.subplots(figsize=(5, 3))
    errors = [100 * (1 - table[str(r)]) for r in ROUTING_ITERS]
    ax.bar([str(r) for r in ROUTING_ITERS], errors, color="#4477aa")
    for k, e in enumerate(errors):
        ax.text(k, e, f"{e:.2f}%", ha="center", va="bottom", fontsize=8)
    ax.set_xlabel("routing iterations at inference")
    ax.set_ylabel("test error (%)")
    ax.set_title(f"Same weights (trained with {trained}), {len(x):,} test digits", fontsize=9)
    data = {"trained_with": trained, "test_digits": len(x), "accuracy": table}
    _save(fig, out, "routing", data)
    return data


def affine_distort(x: torch.Tensor, seed: int = AFFINE["seed"]) -> torch.Tensor:
    """Each image under its own random rotation, scale, shear and shift (zero fill), seeded."""
    g = torch.Generator().manual_seed(seed)
    n = len(x)

    def uniform(lo: float, hi: float) -> torch.Tensor:
        return lo + (hi - lo) * torch.rand(n, generator=g)

    angle = torch.deg2rad(uniform(-AFFINE["rotation_deg"], AFFINE["rotation_deg"]))
    scale = uniform(*AFFINE["scale"])
    shear = torch.tan(torch.deg2rad(uniform(-AFFINE["shear_deg"], AFFINE["shear_deg"])))
    shift = 2 * uniform(-AFFINE["shift_px"], AFFINE["shift_px"]) / x.shape[-1], \
        2 * uniform(-AFFINE["shift_px"], AFFINE["shift_px"]) / x.shape[-1]
    cos, sin = torch.cos(angle), torch.sin(angle)
    # forward transform A = R(angle) @ Shear(shear) * scale; the sampling grid needs its inverse
    a = torch.stack([torch.stack([cos, cos * shear - sin], -1), torch.stack([sin, sin * shear + cos], -1)], -2)
    a = a * scale[:, None, None]
    inverse = torch.linalg.inv(a)
    t = torch.stack(shift, -1)[:, :, None]
    theta = torch.cat([inverse, -inverse @ t], dim=2)  # (N, 2, 3)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, padding_mode="zeros", align_corners=False).clamp(0, 1)


def affine(model: CapsNet, baseline: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, out: Path) -> dict:
    distorted = affine_distort(x)
    result = {name: {"clean": accuracy(m, x, y), "affine": accuracy(m, distorted, y)}
              for name, m in (("capsnet", model), ("cnn_baseline", baseline))}
    fig = plt.figure(figsize=(9, 3.2))
    for k in range(8):
        ax = fig.add_subplot(2, 12, k + 1 if k < 4 else k + 9)
        ax.imshow(distorted[k, 0].numpy(), cmap="gray", vmin=0, vmax=1)
        ax.axis("off")
    ax = fig.add_axes([0.5, 0.12, 0.48, 0.75])
    names = list(result)
    for k, split in enumerate(("clean", "affine")):
        values = [100 * result[n][split] for n in names]
        bars = ax.bar(np.arange(2) + 0.38 * k, values, 0.36, label=split)
        for b, v in zip(bars, values):
            ax.text(b.get_x() + b.get_width() / 2, v, f"{v:.2f}", ha="center", va="bottom", fontsize=8)
    ax.set_xticks(np.arange(2) + 0.19, ["CapsNet", "CNN baseline"])
    ax.set_ylabel("test accuracy (%)")
    ax.set_ylim(min(100 * result[n]["affine"] for n in names) - 10, 101)
    ax.legend(fontsize=8, loc="lower right")
    ax.set_title("Affine-distorted MNIST test set (examples left)", fontsize=9)
    data = {"test_digits": len(x), "distortion": AFFINE, "accuracy": result}
    _save(fig, out, "affine", data)
    return data


@torch.no_grad()
def winner_after_silencing(model: CapsNet, u: torch.Tensor, cells: torch.Tensor, winner: torch.Tensor) -> torch.Tensor:
    """The winner's length once the primary capsules (all 32 types) of `cells` (B, k), indices y * 6 + x into the
    6x6 grid, are set to zero and routing runs again: (B,)."""
    grid = model.cfg.primary_grid**2
    keep = torch.ones(u.shape[0], grid).scatter_(1, cells, 0.0)  # (B, 36)
    u = u * keep.repeat(1, model.cfg.primary_types).unsqueeze(-1)  # capsule i = 36t + cell
    v = model.digit_caps(u)
    return capsule_lengths(v)[torch.arange(len(winner)), winner]


@torch.no_grad()
def occlusion(model: CapsNet, x: torch.Tensor, y: torch.Tensor, out: Path) -> dict:
    """Silence the k cells the routing map ranks highest, lowest, or k random cells; the winner's length drop."""
    x = x[:OCCLUSION["digits"]]
    parts = [(model.primary_caps(F.relu(model.conv1(b))), *model.explain(b)) for b in x.split(250)]
    u = torch.cat([p[0] for p in parts])
    lengths, routing_map = torch.cat([p[1] for p in parts]), torch.cat([p[4] for p in parts])
    winner = lengths.argmax(1)
    before = lengths[torch.arange(len(x)), winner]
    order = routing_map.flatten(1).argsort(1, descending=True)  # (B, 36), highest share first
    generator = torch.Generator().manual_seed(OCCLUSION["seed"])
    drops: dict[str, dict[str, float]] = {"highest": {}, "lowest": {}, "random": {}}
    for k in OCCLUDED_CELLS:
        rankings = {"highest": [order[:, :k]], "lowest": [order[:, -k:]],
                    "random": [torch.rand(len(x), 36, generator=generator).argsort(1)[:, :k]
                               for _ in range(OCCLUSION["random_draws"])]}
        for name, draws in rankings.items():
            drop = torch.stack([before - winner_after_silencing(model, u, cells, winner) for cells in draws])
            drops[name][str(k)] = round(drop.mean().item(), 4)
    fig, ax = plt.subplots(figsize=(5.5, 3.4))
    for name, style, label in (("highest", "o-", "highest share first"), ("random", "s--", "random cells"),
                               ("lowest", "v:", "lowest share first")):
        ax.plot(OCCLUDED_CELLS, [drops[name][str(k)] for k in OCCLUDED_CELLS], style, label=label)
    ax.set_xlabel("cells of the 6x6 primary-capsule grid silenced (all 32 types)")
    ax.set_ylabel("mean drop of the winner's length")
    ax.set_title(f"Silencing cells by the routing map, {len(x):,} test digits", fontsize=9)
    ax.legend(fontsize=8)
    data = {"test_digits": len(x), "mean_winner_length": round(before.mean().item(), 4),
            "cells_silenced": list(OCCLUDED_CELLS), "mean_length_drop": drops, "random_draws": OCCLUSION["random_draws"],
            "seed": OCCLUSION["seed"],
            "highest_beats_random_at_every_k": all(drops["highest"][str(k)] > drops["random"][str(k)]
                                                   for k in OCCLUDED_CELLS),
            "lowest_below_random_at_every_k": all(drops["lowest"][str(k)] < drops["random"][str(k)]
                                                  for k in OCCLUDED_CELLS)}
    _save(fig, out, "occlusion", data)
    return data


EXPERIMENTS = ("reconstructions", "perturb", "routing", "affine", "occlusion")


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(prog="python -m training.evaluate", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("experiments", nargs="*", metavar="EXPERIMENT",
                   help=f"any of {', '.join(EXPERIMENTS)} (default: all)")
    p.add_argument("--weights", type=Path, default=Path("models/capsnet-mnist.safetensors"), help="CapsNet weights")
    p.add_argument("--baseline", type=Path, default=Path("models/baseline-cnn.safetensors"),
                   help="CNN baseline weights (for affine)")
    p.add_argument("--limit", type=int, default=None, help="use the first N test digits (quick mode)")
    p.add_argument("--data", type=Path, default=DEFAULT_ROOT, help="MNIST root folder")
    p.add_argument("--out", type=Path, default=Path("docs/experiments"), help="folder for the PNG and JSON files")
    args = p.parse_args(argv)
    unknown = set(args.experiments) - set(EXPERIMENTS)
    if unknown:
        p.error(f"unknown experiment(s) {', '.join(sorted(unknown))}; choose from {', '.join(EXPERIMENTS)}")
    model, _ = load_weights(args.weights)
    x, y = load_split("test", args.data, args.limit)
    results = {}
    for name in args.experiments or EXPERIMENTS:
        if name == "affine":
            baseline, _ = load_weights(args.baseline)
            results[name] = affine(model, baseline, x, y, args.out)
        else:
            results[name] = {"reconstructions": reconstructions, "perturb": perturb, "routing": routing,
                             "occlusion": occlusion}[name](
                model, x, y, args.out)
        print(f"{name}: wrote {args.out / (name + '.png')}", file=sys.stderr)
    print(json.dumps({k: v for k, v in results.items() if k in ("routing", "affine", "occlusion")}, indent=2))
    return results


if __name__ == "__main__":
    main()
