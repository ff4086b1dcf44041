"""python -m loadtest: start the service, swarm it with headless Locust, write a report, stop it.

Writes under --out: locust_stats.csv (and the other Locust CSVs), report.html, summary.json.
Exits non-zero when any request failed or none succeeded.
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


def prepare_digits(path: Path, model: Path, count: int, data_root: Path) -> None:
    """Real test digits plus the labels the ONNX model gives them in-process."""
    x, _ = load_split("test", data_root, count)
    images = x.numpy()
    expected = CapsNetRuntime(model, device="cpu").predict(images).labels
    np.savez(path, images=images[:, 0], expected=expected)


def read_summary(stats_csv: Path) -> dict:
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


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m loadtest", description=__doc__.splitlines()[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--users", type=int, default=16, help="concurrent Locust users")
    p.add_argument("--spawn-rate", type=float, default=16, help="users started per second")
    p.add_argument("--duration", type=int, default=30, help="seconds of load")
    p.add_argument("--digits", type=int, default=512, help="distinct MNIST test digits to send")
    p.add_argument("--model", type=Path, default=Path("artifacts/capsnet.onnx"), help="ONNX model to serve")
    p.add_argument("--port", type=int, default=None, help="service port (default: a free loopback port)")
    p.add_argument("--out", type=Path, default=Path("runs/loadtest"), help="report folder")
    p.add_argument("--data", type=Path, default=DEFAULT_ROOT, help="MNIST root folder")
    args = p.parse_args(argv)
    if args.users < 1 or args.duration < 1 or args.users > 1000 or args.duration > 3600:
        p.error("--users must be 1..1000 and --duration 1..3600 seconds")

    args.out.mkdir(parents=True, exist_ok=True)
    digits = args.out / "digits.npz"
    prepare_digits(digits, args.model, args.digits, args.data)
    env = {"CAPSNET_MODEL": str(args.model.resolve()), "CAPSNET_DIGITS": str(digits.resolve())}
    with running_service(args.port, env=env, log=args.out / "service.log") as service:
        url = service.url
        print(f"service ready at {url}; {args.users} users for {args.duration} s", file=sys.stderr)
        started = time.time()
        locust = subprocess.run(
            [sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless", "--host", url,
             "-u", str(args.users), "-r", str(args.spawn_rate), "-t", f"{args.duration}s",
             "--csv", str(args.out / "locust"), "--html", str(args.out / "report.html"),
             "--only-summary", "--stop-timeout", "10", "--exit-code-on-error", "0"],
            env={**os.environ, **env}, capture_output=True, text=True, timeout=args.duration + 120,
        )
        wall = time.time() - started
    if not (args.out / "locust_stats.csv").exists():
        print(locust.stdout[-3000:], locust.stderr[-3000:], file=sys.stderr)
        return 2
    summary = {"users": args.users, "duration_s": args.duration, "wall_s": round(wall, 1), "url": url,
               "model": str(args.model), **read_summary(args.out / "locust_stats.csv")}
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary, indent=2))
    if summary["failures"] or not summary["requests"]:
        print(f"FAILED: {summary['failures']} failed of {summary['requests']} requests", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
