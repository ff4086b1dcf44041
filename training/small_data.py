"""Do capsules learn from fewer digits? `python -m training.small_data --help`.

The seed's claim: capsule networks "learn from smaller sets of training data" than a CNN. CapsNet and
the CNN baseline (training/baseline.py: the paper's baseline layers, pooled to about CapsNet's parameter
count) are trained on the same fixed, seeded 1%, 5% and 10% of the 60,000 training digits, with two
seeds each, the same 2-pixel shifts, optimizer and schedule, and each final model is scored once on all
10,000 test digits.

The schedule was fixed before any test score was seen, and nothing is selected: every run sees
IMAGES_PER_RUN shifted digits (more epochs over a smaller subset) with the learning rate falling by
RUN_LR_DECAY over the run, and its last weights are the ones scored. A validation split (VAL digits
held out before the subsets are drawn, never trained on) is recorded per epoch for the record only.

Each run trains in its own folder under --runs and resumes there (`--resume`), so the whole command can
be stopped and started again; a finished run's score is kept in its result.json. The table goes to
--out as small-data.json and small-data.png.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from training import train  # noqa: E402
from training.checkpoint import load_weights, write_json  # noqa: E402
from training.data import DEFAULT_ROOT, load_split  # noqa: E402
from timing import describe_cpu  # noqa: E402

TRAIN_DIGITS = 60_000
FRACTIONS = (0.01, 0.05, 0.10)
SEEDS = (0, 1)
ARCHS = ("capsnet", "cnn")
VAL = 1_000  # held out of the training digits before the subsets are drawn
IMAGES_PER_RUN = 30_000  # shifted digits seen by every run: 50, 10 and 5 epochs at 1%, 5%, 10%
RUN_LR_DECAY = 0.9**5  # the learning rate's fall over a whole run (the default 0.9 per epoch, over 5 epochs)
QUICK = {"fractions": (0.01,), "seeds": (0,), "images_per_run": 1_200, "test_limit": 500}


@dataclass(frozen=True)
class Run:
    arch: str
    fraction: float
    seed: int
    images_per_run: int = IMAGES_PER_RUN

    @property
    def digits(self) -> int:
        return round(TRAIN_DIGITS * self.fraction)

    @property
    def epochs(self) -> int:
        return max(1, round(self.images_per_run / self.digits))

    @property
    def name(self) -> str:
        return f"{self.arch}-{self.fraction * 100:g}pct-seed{self.seed}"

    def train_args(self, folder: Path, data: Path, threads: int | None) -> list[str]:
        """The training command's arguments: the subset is the first `digits` after the fixed validation split."""
        return ["--arch", self.arch, "--limit", str(self.digits), "--val", str(VAL), "--epochs", str(self.epochs),
                "--lr-decay", f"{RUN_LR_DECAY ** (1 / self.epochs):.6f}", "--seed", str(self.seed),
                "--no-test", "--resume", "--quiet", "--device", "cpu", "--data", str(data), "--out", str(folder),
                *(["--threads", str(threads)] if threads else [])]


def run_one(run: Run, runs: Path, data: Path, threads: int | None, test_limit: int | None,
            finished: dict[str, dict]) -> dict:
    """Train (or resume) one run, score its last weights on the test digits once; cached in result.json, and in
    the report's "runs" (`finished`), which is committed: a run finished in an earlier session is not redone."""
    if run.name in finished:
        return finished[run.name]
    folder = runs / run.name
    result_file = folder / "result.json"
    if result_file.exists():
        return {"name": run.name, **json.loads(result_file.read_text())}
    started, cpu_started = time.time(), time.process_time()
    args = run.train_args(folder, data, threads)
    last = train.main(args)
    model, info = load_weights(folder / train.WEIGHTS)
    x_test, y_test = load_split("test", data, test_limit)
    result = {"name": run.name, "arch": run.arch, "fraction": run.fraction, "train_digits": run.digits, "seed": run.seed,
              "epochs": run.epochs, "images_seen": run.epochs * run.digits,
              "val_acc": last.get("val_acc"), "test_acc": train.accuracy(model, x_test, y_test),
              "test_digits": len(x_test), "train_seconds_this_session": round(time.time() - started, 1),
              "cpu_seconds_this_session": round(time.process_time() - cpu_started, 1),
              "command": "python -m training " + " ".join(args)}
    write_json(result_file, result)
    return result


def verdict(capsnet: list[float], cnn: list[float]) -> str:
    """Holds when every CapsNet seed beats every CNN seed; does not hold when the reverse; else no clear difference."""
    if min(capsnet) > max(cnn):
        return "holds"
    if min(cnn) > max(capsnet):
        return "does not hold"
    return "no clear difference"


def table(results: list[dict]) -> list[dict]:
    rows = []
    for fraction in sorted({r["fraction"] for r in results}):
        acc = {arch: [r["test_acc"] for r in results if r["fraction"] == fraction and r["arch"] == arch]
               for arch in ARCHS}
        if not all(acc.values()):
            continue
        rows.append({"fraction": fraction, "train_digits": round(TRAIN_DIGITS * fraction),
                     **{f"{arch}_test_acc": acc[arch] for arch in ARCHS},
                     **{f"{arch}_mean": round(statistics.mean(acc[arch]), 4) for arch in ARCHS},
                     "verdict": verdict(acc["capsnet"], acc["cnn"])})
    return rows


def plot(rows: list[dict], out: Path) -> None:
    fig, ax = plt.subplots(figsize=(5, 3.2))
    for arch, marker in zip(ARCHS, "os"):
        xs = [row["train_digits"] for row in rows for _ in row[f"{arch}_test_acc"]]
        ys = [100 * a for row in rows for a in row[f"{arch}_test_acc"]]
        ax.scatter(xs, ys, marker=marker, label="CapsNet" if arch == "capsnet" else "CNN baseline")
        ax.plot([row["train_digits"] for row in rows], [100 * row[f"{arch}_mean"] for row in rows], alpha=0.5)
    ax.set_xscale("log")
    sizes = [row["train_digits"] for row in rows]
    ax.set_xticks(sizes, [f"{n:,}" for n in sizes])
    ax.minorticks_off()
    ax.set_xlabel("training digits (log scale)")
    ax.set_ylabel("test accuracy, % (10,000 digits)")
    ax.set_title("Fewer training digits: CapsNet against the CNN baseline", fontsize=9)
    ax.legend(fontsize=8)
    fig.savefig(out / "small-data.png", dpi=110, bbox_inches="tight")
    plt.close(fig)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m training.small_data", description=__doc__.splitlines()[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--runs", type=Path, default=Path("runs/small-data"), help="one resumable folder per run")
    p.add_argument("--out", type=Path, default=Path("docs/experiments"), help="where small-data.json/.png go")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads per run (default: torch's choice)")
    p.add_argument("--data", type=Path, default=DEFAULT_ROOT, help="MNIST root folder")
    p.add_argument("--quick", action="store_true",
                   help=f"a check of the path, not a result: {QUICK['images_per_run']} digits at 1%%, one seed,"
                        f" {QUICK['test_limit']} test digits")
    return p


def main(argv: list[str] | None = None) -> dict:
    args = build_parser().parse_args(argv)
    fractions, seeds, images, test_limit = FRACTIONS, SEEDS, IMAGES_PER_RUN, None
    if args.quick:
        fractions, seeds, images, test_limit = (QUICK["fractions"], QUICK["seeds"], QUICK["images_per_run"],
                                                QUICK["test_limit"])
    plan = [Run(arch, fraction, seed, images) for fraction in fractions for seed in seeds for arch in ARCHS]
    report_file = args.out / "small-data.json"
    earlier = json.loads(report_file.read_text()) if report_file.exists() else {}
    finished = {r["name"]: r for r in earlier.get("runs", []) if "name" in r and earlier.get("quick") == args.quick}
    results = []
    for i, run in enumerate(plan, 1):
        print(f"[{i}/{len(plan)}] {run.name}: {run.digits:,} digits x {run.epochs} epochs", file=sys.stderr)
        results.append(run_one(run, args.runs, args.data, args.threads, test_limit, finished))
        print(f"[{i}/{len(plan)}] {run.name}: test accuracy {results[-1]['test_acc']:.4f}", file=sys.stderr)
        write_report(report_file, args.quick, images, results)  # after every run: what is finished is kept
    rows = table(results)
    report = write_report(report_file, args.quick, images, results)
    plot(rows, args.out)
    print(json.dumps(rows, indent=2))
    return report


def write_report(path: Path, quick: bool, images: int, results: list[dict]) -> dict:
    report = {"claim": "capsule networks learn from smaller sets of training data than a CNN",
              "schedule": {"images_per_run": images, "run_lr_decay": round(RUN_LR_DECAY, 4), "val_digits": VAL,
                           "shift_px": 2, "batch_size": 128, "optimizer": "Adam, lr 1e-3",
                           "selection": "none: the last weights of a schedule fixed in advance"},
              "subset": f"the first N training digits after the fixed validation split (seed {train.VAL_SPLIT_SEED});"
                        " the same digits for both models and every seed",
              "quick": quick, "rows": table(results), "runs": results, "cpu": describe_cpu()}
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json(path, report)
    return report


if __name__ == "__main__":
    main()
