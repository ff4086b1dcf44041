"""python -m loadtest.pinned: the per-request cost of the service, measured on disjoint cores.

The server runs on --service-cores, the load generator (wrk, a compiled HTTP client; Debian's `wrk`) on
--client-cores. For three bodies (1 digit as JSON, 1 digit as raw float32, 8 digits as raw float32) it
reports req/s, images/s, that rate as a share of in-process ONNX Runtime on the same cores at its best
batch size, the server's CPU time per request (its processes' CPU counters), and p50/p90/p95/p99 latency, for
the service (`bentoml serve`, int8) and, in the same run, for the hand-written baseline
(loadtest/reference.py). Both servers run at once on the same cores, loaded one at a time: per body
they take --rounds turns (the measured seconds split among them), and in-process ONNX Runtime is
sampled again after each round, so that a shared machine's drift over minutes hits every server
alike. Writes pinned.json and pinned.md under --out and prints the table.

--batchers ours,bentoml measures the service once with each batcher (CAPSNET_BATCHER: ours, or BentoML's
adaptive batching), in the same run.

--workers N runs the service with CAPSNET_WORKERS=N (ONNX Runtime's threads divided among them);
with --share-cores, --service-cores and --client-cores may overlap (both 0,1: all of a 2-core machine's
cores for the workers), and the table's last column says how much CPU wrk took.

With --profile, the service is then loaded once more with each one-digit body while py-spy samples its
processes (on the client's cores; the threads that hold the GIL, that is Python's own work): flame-1-json.svg
and flame-1-raw.svg under --out show where a
request's time goes. Those runs are not in the table: sampling slows the process it samples.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Iterator

import numpy as np
import psutil

from loadtest.flame import self_time_by_package
from loadtest.prometheus import scrape, split
from loadtest.server import MODEL_HELP, bentoml_serve, children_cpu_seconds, free_port, model_file, started
from mnist import DEFAULT_ROOT, read_split
from serving.batching import BATCHERS
from serving.runtime import CapsNetRuntime
from serving.sessions import read_metadata
from timing import images_per_s

BODIES = {"1 digit, JSON": (1, "json"), "1 digit, raw float32": (1, "raw"), "8 digits, raw float32": (8, "raw")}
IN_PROCESS_BATCHES = (1, 8, 16, 32, 64)
SERVICE_LABELS = {"ours": "service", "bentoml": "service, BentoML's batching"}
# wrk's own latency percentiles at the end of a run (microseconds), for every script: p50, p90, p95 and p99
PERCENTILES = (50, 90, 95, 99)
PERCENTILES_LUA = """done = function(summary, latency, requests)
  for _, p in ipairs({%s}) do io.write(string.format("percentile %%d %%d\\n", p, latency:percentile(p))) end
end
""" % ", ".join(map(str, PERCENTILES))
LUA = """wrk.method = "POST"
wrk.headers["Content-Type"] = "{content_type}"
local f = io.open("{body}", "rb"); wrk.body = f:read("*a"); f:close()
""" + PERCENTILES_LUA.replace("{", "{{").replace("}", "}}")


def cores(text: str) -> set[int]:
    return {int(c) for c in text.split(",")}


def batchers(text: str) -> list[str]:
    names = [name.strip() for name in text.split(",")]
    if unknown := set(names) - set(BATCHERS):
        raise argparse.ArgumentTypeError(f"unknown batcher(s) {sorted(unknown)}; choose from {', '.join(BATCHERS)}")
    return names


class InProcess:
    """ONNX Runtime in this process on the service's cores: the model's own speed, without HTTP."""

    def __init__(self, model: Path, variant: str, service_cores: set[int], images: np.ndarray):
        self.cores, self.images = service_cores, images
        self.runtime = CapsNetRuntime(model, device="cpu", threads=len(service_cores), variant=variant)

    def rate(self, batch: int, seconds: float) -> float:
        """images/s at this batch size over `seconds`, this process pinned to the service's cores meanwhile."""
        before = os.sched_getaffinity(0)
        os.sched_setaffinity(0, self.cores)
        try:
            return images_per_s(self.runtime.predict, self.images[:batch], seconds)
        finally:
            os.sched_setaffinity(0, before)


@contextmanager
def server(kind: str, model: Path, variant: str, service_cores: set[int], log: Path, workers: int = 1,
           batcher: str = "ours") -> Iterator[tuple[str, int]]:
    """The service or the baseline, pinned with taskset; yields its URL and pid."""
    port = free_port()
    threads = str(max(1, len(service_cores) // workers))
    if kind == "service":
        command = bentoml_serve(port)
        env = {"CAPSNET_MODEL": str(model), "CAPSNET_VARIANT": variant, "CAPSNET_DEVICE": "cpu",
               "CAPSNET_WORKERS": str(workers), "CAPSNET_THREADS": threads, "CAPSNET_BATCHER": batcher,
               "BENTOML_HOME": str(log.parent / "bentoml")}
    else:
        # the variant's file as the service finds it: named in the fp32 file's `variants` metadata
        file = model if variant == "fp32" else model.with_name(json.loads(read_metadata(model)["variants"])[variant])
        command = [sys.executable, "-m", "loadtest.reference", "--model", str(file), "--port", str(port),
                   "--threads", threads]
        env = {}
    with started(command, port, env, log, cores=service_cores) as proc:
        yield f"http://127.0.0.1:{port}", proc.pid


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process and all its descendants."""
    total = 0.0
    root = psutil.Process(pid)
    for p in [root, *root.children(recursive=True)]:
        try:
            t = p.cpu_times()
            total += t.user + t.system
        except psutil.NoSuchProcess:
            pass
    return total


def percentiles(out: str) -> dict[str, float]:
    """p50_ms ... p99_ms from what PERCENTILES_LUA printed at the end of a wrk run."""
    found = {int(p): int(us) / 1000 for p, us in re.findall(r"^percentile (\d+) (\d+)$", out, re.M)}
    missing = [p for p in PERCENTILES if p not in found]
    if missing:
        raise RuntimeError(f"wrk printed no percentile {missing}: the script lacks PERCENTILES_LUA\n{out[-500:]}")
    return {f"p{p}_ms": found[p] for p in PERCENTILES}


def wrk(url: str, script: Path, client_cores: set[int], connections: int, seconds: float, path: str = "/classify"
        ) -> dict:
    """One wrk run against url + path; also the CPU seconds wrk itself took."""
    cpu_before = children_cpu_seconds()
    run = subprocess.run(["taskset", "-c", ",".join(map(str, sorted(client_cores))), "wrk", "-t1",
                          f"-c{connections}", f"-d{max(1, round(seconds))}s", "--latency", "-s", str(script), url + path],
                         capture_output=True, text=True, timeout=seconds + 60)
    if run.returncode != 0:
        raise RuntimeError(f"wrk failed (exit {run.returncode}): {run.stderr.strip()} {run.stdout.strip()[-500:]}")
    out = run.stdout

    client_cpu = children_cpu_seconds() - cpu_before
    requests = int(re.search(r"(\d+) requests in", out).group(1))
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return {"requests": requests, "requests_per_s": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),
            **percentiles(out), "non_2xx": int(errors.group(1)) if errors else 0,
            "client_cpu_s": round(client_cpu, 2)}


def profile(pid: int, url: str, script: Path, client_cores: set[int], connections: int, seconds: float,
            svg: Path) -> None:
    """A py-spy flame graph of the process tree `pid` while wrk sends `script`'s body for `seconds`, with the
    self time by package (loadtest/flame.py) printed."""
    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    pin = ["taskset", "-c", ",".join(map(str, sorted(client_cores)))]
    recorder = subprocess.Popen(pin + [spy, "record", "--pid", str(pid), "--subprocesses", "--rate", "200", "--gil",
                                       "--full-filenames", "--duration", str(int(seconds)), "--format", "flamegraph",
                                       "--output", str(svg)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    wrk(url, script, client_cores, connections, seconds + 2)
    _, err = recorder.communicate(timeout=seconds + 120)
    if recorder.returncode != 0:
        raise RuntimeError(f"py-spy failed: {err.strip()[-500:]}")
    text = relative_paths(svg.read_text(), f"{Path.cwd()}/")
    svg.write_text(text)
    shares = self_time_by_package(text)
    print(f"wrote {svg}; self time by package: " + ", ".join(f"{k} {v}%" for k, v in list(shares.items())[:10]),
          file=sys.stderr)


def relative_paths(svg: str, root: str) -> str:
    """A flame graph's file names relative to the repository (as committed): `root` cut from the frames' titles,
    and from the labels py-spy cut short while they still held it ("(/srv/re.." becomes "(..")."""
    svg = svg.replace(root, "")
    return re.sub(r"\((/[^()<]*)\.\.<", lambda m: "(..<" if root.startswith(m.group(1)) else m.group(0), svg)


def measure(args: argparse.Namespace) -> dict:
    service_cores, client_cores = cores(args.service_cores), cores(args.client_cores)
    if service_cores & client_cores and not args.share_cores:
        raise SystemExit("--service-cores and --client-cores must not share a core (unless --share-cores)")
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is missing: apt-get install wrk (Debian's package)")
    args.out.mkdir(parents=True, exist_ok=True)
    images = read_split("test", args.data, 64)[0][:, None]
    in_process = InProcess(args.model, args.variant, service_cores, images)
    rates = {batch: in_process.rate(batch, args.in_process_seconds) for batch in IN_PROCESS_BATCHES}
    best_batch = max(rates, key=rates.get)
    best = rates[best_batch]
    print(f"in-process ONNX Runtime ({args.variant}, cores {args.service_cores}): {best:.0f} images/s"
          f" at batch {best_batch}", file=sys.stderr)
    for name, (count, form) in BODIES.items():
        body = args.out / f"body-{count}-{form}"
        body.write_bytes(images[:count].astype("<f4").tobytes() if form == "raw" else
                         json.dumps({"images": images[:count, 0].tolist()}).encode())
        (args.out / f"{body.name}.lua").write_text(LUA.format(
            content_type="application/octet-stream" if form == "raw" else "application/json", body=body))
    servers = [("service", batcher) for batcher in args.batchers] + [("reference", "")]
    with ExitStack() as stack:
        running = []  # (label, url, pid), all started at once, pinned to the same cores; one is loaded at a time
        for kind, batcher in servers:
            log = args.out / (f"service-{batcher}.log" if batcher not in ("ours", "") else f"{kind}.log")
            workers = args.workers if kind == "service" else 1
            url, pid = stack.enter_context(server(kind, args.model, args.variant, service_cores, log, workers, batcher))
            running.append((SERVICE_LABELS.get(batcher, kind), url, pid))
        rows, model_rates = [], [best]
        for name, (count, form) in BODIES.items():
            script = args.out / f"body-{count}-{form}.lua"
            parts: dict[str, list[tuple[dict, float]]] = {label: [] for label, _, _ in running}
            grown: dict[str, dict[str, float]] = {label: {} for label, _, _ in running}  # the service's /metrics
            for label, url, _ in running:
                if args.warmup > 0:
                    wrk(url, script, client_cores, args.connections, args.warmup)
            for _ in range(args.rounds):  # the servers take turns, so that the machine's drift hits each alike
                for label, url, pid in running:
                    before = scrape(url) if label != "reference" else None  # the baseline has no metrics
                    cpu_before = cpu_seconds(pid)
                    result = wrk(url, script, client_cores, args.connections, args.seconds / args.rounds)
                    parts[label].append((result, cpu_seconds(pid) - cpu_before))
                    if before is not None:
                        for key, value in scrape(url).items():
                            grown[label][key] = grown[label].get(key, 0.0) + value - before.get(key, 0.0)
                model_rates.append(in_process.rate(best_batch, args.in_process_seconds))
            for label, _, _ in running:
                rows.append({**combine(label, name, count, parts[label]),
                             "server_split": split({}, grown[label]) if grown[label] else None})
        if args.profile:
            label, url, pid = running[0]
            for count, form in ((1, "json"), (1, "raw")):
                profile(pid, url, args.out / f"body-{count}-{form}.lua", client_cores, args.connections,
                        args.profile, args.out / f"flame-{count}-{form}.svg")
    model_rate = sum(model_rates) / len(model_rates)
    for row in rows:
        row["share_of_in_process"] = round(row["images_per_s"] / model_rate, 3)
        print(f"{row['server']:9} {row['body']:22} {row['requests_per_s']:8.1f} req/s"
              f"  {row['share_of_in_process']:6.1%}  {row['cpu_ms_per_request']:5.2f} ms CPU/request", file=sys.stderr)
    return {"in_process_images_per_s": round(model_rate, 1), "in_process_batch": best_batch,
            "in_process_samples": [round(r, 1) for r in model_rates], "variant": args.variant,
            "workers": args.workers, "service_cores": args.service_cores, "client_cores": args.client_cores,
            "connections": args.connections, "seconds": args.seconds, "rounds": args.rounds, "rows": rows}


def combine(label: str, body: str, count: int, parts: list[tuple[dict, float]]) -> dict:
    """One row from a server's rounds: rates and CPU over all of them, the median round's p50, p90 and p95, and the
    worst p99."""
    requests = sum(result["requests"] for result, _ in parts)
    seconds = sum(result["requests"] / result["requests_per_s"] for result, _ in parts if result["requests_per_s"])
    rate = requests / seconds if seconds else 0.0
    def median(key: str) -> float:
        return sorted(result[key] for result, _ in parts)[len(parts) // 2]

    return {"server": label, "body": body, "images_per_request": count, "requests": requests,
            "requests_per_s": round(rate, 1), "images_per_s": round(rate * count, 1),
            "cpu_ms_per_request": round(1000 * sum(cpu for _, cpu in parts) / max(requests, 1), 2),
            "p50_ms": median("p50_ms"), "p90_ms": median("p90_ms"), "p95_ms": median("p95_ms"),
            "p99_ms": max(result["p99_ms"] for result, _ in parts),
            "non_2xx": sum(result["non_2xx"] for result, _ in parts),
            "client_cpu_s": round(sum(result["client_cpu_s"] for result, _ in parts), 2)}


def in_process_summary(report: dict, where: str) -> str:
    """The report's in-process ONNX Runtime rate, the share every row is given of."""
    samples = report["in_process_samples"]
    return (f"In-process ONNX Runtime ({where}): {report['in_process_images_per_s']:,.0f} images/s at batch"
            f" {report['in_process_batch']} (mean of {len(samples)} samples over the run, {min(samples):,.0f} to"
            f" {max(samples):,.0f}).")


def split_cells(row: dict) -> str:
    """The service's side of a row (loadtest/prometheus.py): mean queue wait, run per batch, images per batch."""
    server = row.get("server_split") or {}
    if server.get("queue_ms") is None:
        return "- | - | -"
    return f"{server['queue_ms']:.1f} ms | {server['compute_ms']:.1f} ms | {server['batch_images']:.1f}"


def markdown(report: dict) -> str:
    lines = [in_process_summary(report, f"{report['variant']}, cores {report['service_cores']}") +
             f" Servers on cores {report['service_cores']} ({report['workers']} service worker(s)),"
             f" wrk on {report['client_cores']}, {report['connections']} connections,"
             f" {report['seconds']:g} s per body and server in {report['rounds']} turns.", "",
             "| server | body | req/s | images/s | of in-process | of the baseline | server CPU per request | p50 |"
             " p90 | p95 | p99 | non-2xx | wrk's CPU | queue | compute | batch |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    baseline = {r["body"]: r["images_per_s"] for r in report["rows"] if r["server"] == "reference"}
    for r in report["rows"]:
        versus = f"{r['images_per_s'] / baseline[r['body']]:.0%}" if baseline.get(r["body"]) else "-"
        lines.append(f"| {r['server']} | {r['body']} | {r['requests_per_s']:,.0f} | {r['images_per_s']:,.0f} |"
                     f" {r['share_of_in_process']:.0%} | {versus} | {r['cpu_ms_per_request']:.2f} ms |"
                     f" {r['p50_ms']:.1f} ms | {r['p90_ms']:.1f} ms | {r['p95_ms']:.1f} ms | {r['p99_ms']:.1f} ms |"
                     f" {r['non_2xx']} | {r['client_cpu_s'] / report['seconds']:.0%} of a core | {split_cells(r)} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m loadtest.pinned", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model", type=model_file, default="models/capsnet-mnist.onnx", help=MODEL_HELP)
    p.add_argument("--variant", default="int8", help="variant both servers run")
    p.add_argument("--service-cores", default="0", help="cores of the server and of in-process ORT")
    p.add_argument("--client-cores", default="1", help="cores of wrk")
    p.add_argument("--connections", type=int, default=16, help="wrk connections")
    p.add_argument("--seconds", type=float, default=15, help="measured seconds per body and server")
    p.add_argument("--rounds", type=int, default=3,
                   help="the servers take turns this many times per body, --seconds split among the turns")
    p.add_argument("--warmup", type=float, default=3, help="unmeasured seconds per server before each body")
    p.add_argument("--in-process-seconds", type=float, default=1.5,
                   help="seconds per in-process batch size, and per in-process sample after each round")
    p.add_argument("--data", type=Path, default=Path(DEFAULT_ROOT), help="MNIST root folder")
    p.add_argument("--out", type=Path, default=Path("runs/pinned"), help="where the report goes")
    p.add_argument("--workers", type=int, default=1, help="the service's CAPSNET_WORKERS (threads: cores / workers)")
    p.add_argument("--batchers", type=batchers, default="ours",
                   help="the service's batchers to measure, comma-separated: ours, bentoml (BentoML's adaptive"
                        " batching)")
    p.add_argument("--share-cores", action="store_true",
                   help="allow --service-cores and --client-cores to overlap (set both, e.g. to 0,1, to measure workers"
                        " on all cores; wrk's CPU is reported)")
    p.add_argument("--profile", type=float, default=0, metavar="SECONDS",
                   help="then profile the service with py-spy for this long per one-digit body (0: no profile)")
    p.add_argument("--quick", action="store_true", help="1 s per body in one round, no warm-up (what the tests run)")
    args = p.parse_args(argv)
    if args.quick:
        args.seconds, args.warmup, args.in_process_seconds, args.rounds = 1, 0, 0.5, 1
    report = measure(args)
    failed = [r for r in report["rows"] if r["non_2xx"] or not r["requests"]]
    (args.out / "pinned.json").write_text(json.dumps(report, indent=1) + "\n")
    (args.out / "pinned.md").write_text(markdown(report) + "\n")
    print(markdown(report))
    if failed:
        print(f"FAILED: non-2xx answers or no requests in {[(r['server'], r['body']) for r in failed]}",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
