"""python -m loadtest: start the service, swarm it with headless Locust at each user count, report.

One service for the whole sweep; one bounded Locust run per user count. Each request carries
--images-per-request real test digits (raw float32 by default, or JSON) and every answer is checked.
Also measures in-process ONNX Runtime (same model variant) at several batch sizes, before and after
the sweep; the served images/s is reported as a fraction of the best of those.
Writes under --out: locust-u<N>_stats.csv and report-u<N>.html per step, summary.json, loadtest.png.
Exits non-zero when any request failed, none succeeded, or the p99 SLO is missed. The SLO is derived from the
model's own speed measured in the same run, so that it means the same on every machine: at U users of K images
each, a request may wait for the U x K images ahead of and in it, which in-process ONNX Runtime runs in
U x K / R seconds at its best rate R; the service may take SLO_OVERHEAD times that, plus SLO_SLACK_MS.
--slo-p99-ms sets a fixed bound instead, for a user who holds a real SLO.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

from loadtest.prometheus import scrape, split
from loadtest.server import MODEL_HELP, children_cpu_seconds, model_file, running_service
from serving.limits import MAX_BATCH
from serving.runtime import CapsNetRuntime
from serving.settings import VARIANTS
from timing import by_batch
from mnist import DEFAULT_ROOT, read_split

LOCUSTFILE = Path(__file__).with_name("locustfile.py")


def prepare_digits(path: Path, runtime: CapsNetRuntime, count: int, data_root: Path) -> None:
    """Real test digits plus the labels the ONNX model gives them in-process."""
    images = read_split("test", data_root, count)[0][:, None]
    np.savez(path, images=images[:, 0], expected=runtime.predict(images).labels)


IN_PROCESS_BATCHES = (1, 8, 16, 32, 64, 256)
LOCUST_BUSY = 0.9  # of a core per Locust process: at or above it, Locust may be what limits the rate


def in_process_images_per_s(runtime: CapsNetRuntime, images: np.ndarray, seconds: float = 1.5) -> dict[int, float]:
    """Images/s of runtime.predict alone, per batch size (batch sizes up to len(images))."""
    return by_batch(runtime.predict, images, tuple(b for b in IN_PROCESS_BATCHES if b <= len(images)), seconds)


def read_stats(stats_csv: Path) -> dict:
    with open(stats_csv) as f:
        row = next(r for r in csv.DictReader(f) if r["Name"] == "Aggregated")
    return {
        "requests": int(row["Request Count"]),
        "failures": int(row["Failure Count"]),
        "requests_per_s": round(float(row["Requests/s"]), 1),
        "p50_ms": float(row["50%"]),
        "p90_ms": float(row["90%"]),
        "p95_ms": float(row["95%"]),
        "p99_ms": float(row["99%"]),
        "mean_ms": round(float(row["Average Response Time"]), 1),
    }


REPORT_HEADER = (f"{'users':>6} {'req/s':>8} {'images/s':>9} {'p50':>6} {'p90':>6} {'p95':>6} {'p99':>6} {'fails':>6}"
                 f" {'of in-process':>14} {'queue':>7} {'compute':>8} {'batch':>6} {'Locust CPU':>11}")


def report_line(s: dict) -> str:
    """One step of the report: the client's view, then the server's split (- where it has none)."""
    server = s["server"] or {"queue_ms": None, "compute_ms": None, "batch_images": None}

    def shown(value: float | None, form: str) -> str:
        return "-" if value is None else format(value, form)

    return (f"{s['users']:>6} {s['requests_per_s']:>8.1f} {s['images_per_s']:>9.1f} {s['p50_ms']:>6.0f} "
            f"{s['p90_ms']:>6.0f} {s['p95_ms']:>6.0f} {s['p99_ms']:>6.0f} {s['failures']:>6}"
            f" {s['fraction_of_in_process']:>14.0%} {shown(server['queue_ms'], '.1f'):>7}"
            f" {shown(server['compute_ms'], '.1f'):>8} {shown(server['batch_images'], '.1f'):>6}"
            f" {s['locust_cpu_cores']:>11.2f}")


SLO_OVERHEAD = 2.0  # the derived p99 bound: this many times the model's own time for the requests ahead ...
SLO_SLACK_MS = 100.0  # ... plus this


def derived_slo_ms(users: int, images_per_request: int, in_process_images_per_s: float) -> float:
    """The p99 bound at `users` users: the time the queue ahead of a request and the request itself need at the
    model's in-process rate, times SLO_OVERHEAD, plus SLO_SLACK_MS."""
    return SLO_OVERHEAD * 1000 * users * images_per_request / in_process_images_per_s + SLO_SLACK_MS


def swarm(url: str, users: int, duration: int, out: Path, env: dict[str, str], processes: int = 1,
          stop: threading.Event | None = None, server_split: bool = True) -> dict:
    """One bounded headless Locust run (in `processes` processes: Locust's --processes); returns its aggregated
    stats and the CPU Locust itself took, in cores (its processes' CPU time over the step's duration). With
    `stop`, the run lasts until that event is set (`duration` is then only its upper bound), and Locust is
    stopped as Ctrl-C stops it, its stats written. With server_split, the service's /metrics before and after say
    how its requests split into queue and compute (loadtest/prometheus.py): a single service's, not a balancer's."""
    prefix = out / f"locust-u{users}"
    server_before = scrape(url) if server_split else None
    cpu_before = children_cpu_seconds()
    started = time.monotonic()
    proc = subprocess.Popen(
        [sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless", "--host", url,
         "-u", str(users), "-r", str(users), "-t", f"{duration}s", "--csv", str(prefix),
         "--html", str(out / f"report-u{users}.html"), "--only-summary", "--stop-timeout", "10",
         "--exit-code-on-error", "0", *(["--processes", str(processes)] if processes > 1 else [])],
        env={**os.environ, **env}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if stop is not None:
        while proc.poll() is None and not stop.wait(0.1):
            pass
        proc.send_signal(signal.SIGINT)
    output, _ = proc.communicate(timeout=duration + 120)
    duration = max(1, round(time.monotonic() - started)) if stop is not None else duration
    locust_cores = (children_cpu_seconds() - cpu_before) / duration
    stats_csv = Path(f"{prefix}_stats.csv")
    if not stats_csv.exists():
        raise RuntimeError(f"Locust wrote no stats: {output[-3000:]}")
    stats = read_stats(stats_csv)
    images = int(env["CAPSNET_LOAD_IMAGES"])
    return {"users": users, "duration_s": duration, **stats,
            "images_per_s": round(stats["requests_per_s"] * images, 1), "locust_processes": processes,
            "locust_cpu_cores": round(locust_cores, 2),
            "server": None if server_before is None else split(server_before, scrape(url))}


def plot(summary: dict, path: Path) -> None:
    """Served images/s and p99 per user count, against the in-process rate and the p99 SLO."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps, in_process = summary["steps"], summary["in_process_best_images_per_s"]
    users = [s["users"] for s in steps]
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.3))
    left.plot(users, [s["images_per_s"] for s in steps], marker="o",
              label=f"served ({summary['images_per_request']} per request, {summary['body']})")
    left.axhline(in_process, color="gray", linestyle="--", label="in-process ONNX Runtime, best batch size")
    left.axhline(0.8 * in_process, color="gray", linestyle=":", label="80% of in-process")
    left.set_ylim(0, 1.15 * max(in_process, *[s["images_per_s"] for s in steps]))
    left.set_ylabel("images / s")
    right.plot(users, [s["p99_ms"] for s in steps], marker="s", color="#cc6677", label="p99")
    right.plot(users, [s["p50_ms"] for s in steps], marker=".", color="#882255", label="p50")
    right.axhline(summary["slo"]["p99_ms"], color="gray", linestyle=":",
                  label=f"p99 SLO at {summary['slo']['at_users']} users")
    right.set_ylim(bottom=0)
    right.set_ylabel("latency (ms)")
    for ax in (left, right):
        ax.set_xscale("log", base=2)
        ax.set_xticks(users, [str(u) for u in users])
        ax.set_xlabel("Locust users")
        ax.legend(fontsize=7)
    fig.suptitle(f"{summary['variant']} model, {summary['cpus']} CPUs, {summary['date']}", fontsize=9)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m loadtest", description=__doc__.splitlines()[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--users", type=int, nargs="+", default=[1, 4, 16, 64], help="user counts, one step each")
    p.add_argument("--duration", type=int, default=20, help="seconds of load per step")
    p.add_argument("--images-per-request", type=int, default=8, help="digits in each request (1..256)")
    p.add_argument("--body", choices=["octets", "json"], default="octets",
                   help="request body: raw float32 (application/octet-stream) or JSON")
    p.add_argument("--digits", type=int, default=512, help="distinct MNIST test digits to send")
    p.add_argument("--in-process-seconds", type=float, default=1.5,
                   help="seconds per batch size of the in-process ONNX Runtime measurement, before and after the sweep")
    p.add_argument("--slo-p99-ms", type=float, default=None,
                   help="a fixed p99 latency bound, checked at --slo-users (default: derived from the model's"
                        " in-process speed measured in the same run; see the top of loadtest/run.py)")
    p.add_argument("--slo-users", type=int, default=16, help="user count at which the p99 SLO is checked")
    p.add_argument("--model", type=model_file, default="models/capsnet-mnist.onnx", help=MODEL_HELP)
    p.add_argument("--variant", choices=["auto", *VARIANTS], default="auto",
                   help="model variant (CAPSNET_VARIANT); auto: int8 on the CPU, fp16 on CUDA, if it met its accuracy bar")
    p.add_argument("--locust-processes", type=int, default=1,
                   help="Locust processes (its --processes), for when one Locust process is the bottleneck")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu",
                   help="where the service (CAPSNET_DEVICE) and the in-process reference run")
    p.add_argument("--workers", type=int, default=None,
                   help="the service's worker processes (CAPSNET_WORKERS; default: the service's own default)")
    p.add_argument("--port", type=int, default=None, help="service port (default: a free loopback port)")
    p.add_argument("--out", type=Path, default=Path("runs/loadtest"), help="report folder")
    p.add_argument("--data", type=Path, default=DEFAULT_ROOT, help="MNIST root folder")
    args = p.parse_args(argv)
    if any(u < 1 or u > 1000 for u in args.users) or not 1 <= args.duration <= 3600:
        p.error("each --users must be 1..1000 and --duration 1..3600 seconds")
    if not 1 <= args.images_per_request <= min(MAX_BATCH, args.digits):
        p.error(f"--images-per-request must be 1..{min(MAX_BATCH, args.digits)} (at most --digits)")

    args.out.mkdir(parents=True, exist_ok=True)
    runtime = CapsNetRuntime(args.model, device=args.device, variant=args.variant)
    variant, runtime_providers = runtime.variant, runtime.providers
    digits = args.out / "digits.npz"
    prepare_digits(digits, runtime, args.digits, args.data)
    images = np.load(digits)["images"][:, None]
    before = in_process_images_per_s(runtime, images, args.in_process_seconds)
    print(f"in-process ONNX Runtime ({variant}), images/s by batch size: {before}", file=sys.stderr)
    env = {"CAPSNET_MODEL": str(args.model.resolve()), "CAPSNET_DIGITS": str(digits.resolve()),
           "CAPSNET_DEVICE": args.device, "CAPSNET_VARIANT": variant,
           **({"CAPSNET_WORKERS": str(args.workers)} if args.workers else {}),
           "CAPSNET_LOAD_IMAGES": str(args.images_per_request), "CAPSNET_LOAD_BODY": args.body}
    steps = []
    with running_service(args.port, env=env, log=args.out / "service.log") as service:
        for users in args.users:
            print(f"{service.url}: {users} users for {args.duration} s", file=sys.stderr)
            steps.append(swarm(service.url, users, args.duration, args.out, env, args.locust_processes))
            print(json.dumps(steps[-1]), file=sys.stderr)
    # measured again after the sweep; the better of the two runs is the reference (the machine is shared)
    after = in_process_images_per_s(runtime, images, args.in_process_seconds)
    del runtime
    rates = {b: max(before[b], after[b]) for b in before}
    in_process = max(rates.values())
    for step in steps:
        step["fraction_of_in_process"] = round(step["images_per_s"] / in_process, 3)
    slo_step = next((s for s in steps if s["users"] == args.slo_users), None)
    slo_ms = args.slo_p99_ms or derived_slo_ms(args.slo_users, args.images_per_request, in_process)
    failures = sum(s["failures"] for s in steps)
    problems = []
    if failures:
        problems.append(f"{failures} failed requests")
    if not all(s["requests"] for s in steps):
        problems.append("a step completed no request")
    if slo_step and slo_step["p99_ms"] > slo_ms:
        problems.append(f"p99 {slo_step['p99_ms']:.0f} ms at {args.slo_users} users > {slo_ms:.0f} ms")
    summary = {
        "model": str(args.model), "variant": variant, "date": time.strftime("%Y-%m-%d %H:%M"),
        "cpus": os.cpu_count(), "device": args.device, "providers": runtime_providers,
        "workers": args.workers, "images_per_request": args.images_per_request, "body": args.body,
        "in_process_images_per_s": rates, "in_process_before_after": [before, after],
        "in_process_best_images_per_s": in_process, "steps": steps,
        "best_fraction_of_in_process": max(s["fraction_of_in_process"] for s in steps),
        "slo": {"failures": failures, "p99_ms": round(slo_ms, 1), "at_users": args.slo_users,
                "derived": args.slo_p99_ms is None, "checked": slo_step is not None, "passed": not problems},
    }
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    plot(summary, args.out / "loadtest.png")
    print(f"\n{variant} model, {args.images_per_request} images per request as {args.body}")
    print(REPORT_HEADER)
    for s in steps:
        print(report_line(s))
    print("ms: the client's latency percentiles; queue: a request's mean wait for its batch, compute: the model's"
          " mean run per batch, batch: mean images per batch (the service's /metrics over the same step)")
    busy = [s["users"] for s in steps if s["locust_cpu_cores"] / s["locust_processes"] >= LOCUST_BUSY]
    if busy:
        print(f"Locust used {LOCUST_BUSY:.0%} or more of a core per process at {busy} users: it may have been the"
              f" bottleneck there; rerun with --locust-processes {2 * args.locust_processes}", file=sys.stderr)
    print(f"in-process ONNX Runtime ({variant}): best {in_process:.0f} images/s (batch sizes {rates}); "
          f"report in {args.out}")
    if slo_step is None:
        print(f"p99 SLO: not checked (no step at {args.slo_users} users)")
    else:
        print(f"p99 SLO at {args.slo_users} users: {slo_ms:.0f} ms"
              + (" (set)" if args.slo_p99_ms else f" (derived: {SLO_OVERHEAD:g} x the model's time for {args.slo_users}"
                                                  f" x {args.images_per_request} images at {in_process:.0f} images/s,"
                                                  f" + {SLO_SLACK_MS:g} ms)")
              + f": p99 {slo_step['p99_ms']:.0f} ms, {'met' if slo_step['p99_ms'] <= slo_ms else 'MISSED'}")
    if problems:
        print("FAILED: " + "; ".join(problems), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
