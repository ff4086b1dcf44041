"""python -m loadtest: start the service, swarm it with headless Locust at each user count, report.

One service for the whole sweep; one bounded Locust run per user count. Also measures in-process
ONNX Runtime images/s in the same run, so the served rate is reported as a fraction of it.
Writes under --out: locust-u<N>_stats.csv and report-u<N>.html per step, summary.json, loadtest.png.
Exits non-zero when any request failed, none succeeded, or the p99 SLO is missed.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from loadtest.server import running_service
from serving.runtime import CapsNetRuntime
from training.data import DEFAULT_ROOT, load_split

LOCUSTFILE = Path(__file__).with_name("locustfile.py")


def prepare_digits(path: Path, runtime: CapsNetRuntime, count: int, data_root: Path) -> None:
    """Real test digits plus the labels the ONNX model gives them in-process."""
    images = load_split("test", data_root, count)[0].numpy()
    np.savez(path, images=images[:, 0], expected=runtime.predict(images).labels)


def in_process_images_per_s(runtime: CapsNetRuntime, images: np.ndarray, seconds: float = 3.0) -> float:
    runtime.predict(images)
    done, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        runtime.predict(images)
        done += len(images)
    return done / (time.perf_counter() - started)


def read_stats(stats_csv: Path) -> dict:
    with open(stats_csv) as f:
        row = next(r for r in csv.DictReader(f) if r["Name"] == "Aggregated")
    return {
        "requests": int(row["Request Count"]),
        "failures": int(row["Failure Count"]),
        "requests_per_s": round(float(row["Requests/s"]), 1),
        "p50_ms": float(row["50%"]),
        "p95_ms": float(row["95%"]),
        "p99_ms": float(row["99%"]),
        "mean_ms": round(float(row["Average Response Time"]), 1),
    }


def swarm(url: str, users: int, duration: int, out: Path, env: dict[str, str]) -> dict:
    """One bounded headless Locust run; returns its aggregated stats."""
    prefix = out / f"locust-u{users}"
    run = subprocess.run(
        [sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless", "--host", url,
         "-u", str(users), "-r", str(users), "-t", f"{duration}s", "--csv", str(prefix),
         "--html", str(out / f"report-u{users}.html"), "--only-summary", "--stop-timeout", "10",
         "--exit-code-on-error", "0"],
        env={**os.environ, **env}, capture_output=True, text=True, timeout=duration + 120,
    )
    stats_csv = Path(f"{prefix}_stats.csv")
    if not stats_csv.exists():
        raise RuntimeError(f"Locust wrote no stats: {run.stdout[-2000:]} {run.stderr[-2000:]}")
    return {"users": users, "duration_s": duration, **read_stats(stats_csv)}


def plot(steps: list[dict], in_process: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    users = [s["users"] for s in steps]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(users, [s["requests_per_s"] for s in steps], marker="o", label="served images/s (1 per request)")
    ax.axhline(in_process, color="gray", linestyle="--", label="in-process ONNX Runtime, batch 64")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("Locust users")
    ax.set_ylabel("images / s")
    right = ax.twinx()
    right.plot(users, [s["p99_ms"] for s in steps], marker="s", color="#cc6677", label="p99 latency")
    right.set_ylabel("p99 (ms)")
    fig.legend(fontsize=7, loc="upper left")
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m loadtest", description=__doc__.splitlines()[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--users", type=int, nargs="+", default=[1, 4, 16, 64], help="user counts, one step each")
    p.add_argument("--duration", type=int, default=20, help="seconds of load per step")
    p.add_argument("--digits", type=int, default=512, help="distinct MNIST test digits to send")
    p.add_argument("--slo-p99-ms", type=float, default=250, help="p99 latency bound, checked at --slo-users")
    p.add_argument("--slo-users", type=int, default=16, help="user count at which the p99 SLO is checked")
    p.add_argument("--model", type=Path, default=Path("artifacts/capsnet.onnx"), help="ONNX model to serve")
    p.add_argument("--port", type=int, default=None, help="service port (default: a free loopback port)")
    p.add_argument("--out", type=Path, default=Path("runs/loadtest"), help="report folder")
    p.add_argument("--data", type=Path, default=DEFAULT_ROOT, help="MNIST root folder")
    args = p.parse_args(argv)
    if any(u < 1 or u > 1000 for u in args.users) or not 1 <= args.duration <= 3600:
        p.error("each --users must be 1..1000 and --duration 1..3600 seconds")

    args.out.mkdir(parents=True, exist_ok=True)
    runtime = CapsNetRuntime(args.model, device="cpu")
    digits = args.out / "digits.npz"
    prepare_digits(digits, runtime, args.digits, args.data)
    in_process = in_process_images_per_s(runtime, np.load(digits)["images"][:64, None])
    del runtime
    env = {"CAPSNET_MODEL": str(args.model.resolve()), "CAPSNET_DIGITS": str(digits.resolve())}
    steps = []
    with running_service(args.port, env=env, log=args.out / "service.log") as service:
        for users in args.users:
            print(f"{service.url}: {users} users for {args.duration} s", file=sys.stderr)
            steps.append(swarm(service.url, users, args.duration, args.out, env))
            steps[-1]["fraction_of_in_process"] = round(steps[-1]["requests_per_s"] / in_process, 3)
            print(json.dumps(steps[-1]), file=sys.stderr)
    slo_step = next((s for s in steps if s["users"] == args.slo_users), None)
    failures = sum(s["failures"] for s in steps)
    problems = []
    if failures:
        problems.append(f"{failures} failed requests")
    if not all(s["requests"] for s in steps):
        problems.append("a step completed no request")
    if slo_step and slo_step["p99_ms"] > args.slo_p99_ms:
        problems.append(f"p99 {slo_step['p99_ms']:.0f} ms at {args.slo_users} users > {args.slo_p99_ms:.0f} ms")
    summary = {
        "model": str(args.model), "date": time.strftime("%Y-%m-%d %H:%M"), "cpus": os.cpu_count(),
        "in_process_images_per_s_batch64": round(in_process, 1), "steps": steps,
        "best_fraction_of_in_process": max(s["fraction_of_in_process"] for s in steps),
        "slo": {"failures": 0, "p99_ms": args.slo_p99_ms, "at_users": args.slo_users,
                "checked": slo_step is not None, "passed": not problems},
    }
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    plot(steps, in_process, args.out / "loadtest.png")
    print(f"\n{'users':>6} {'req/s':>8} {'p50':>6} {'p95':>6} {'p99':>6} {'fails':>6} {'of in-process':>14}")
    for s in steps:
        print(f"{s['users']:>6} {s['requests_per_s']:>8.1f} {s['p50_ms']:>6.0f} {s['p95_ms']:>6.0f} "
              f"{s['p99_ms']:>6.0f} {s['failures']:>6} {s['fraction_of_in_process']:>14.0%}")
    print(f"in-process ONNX Runtime: {in_process:.0f} images/s at batch 64; report in {args.out}")
    if problems:
        print("FAILED: " + "; ".join(problems), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
