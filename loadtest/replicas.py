"""python -m loadtest.replicas: two service replicas behind HAProxy, under Locust, restarted mid-run.

  --mode rolling  each replica in turn gets SIGTERM (to `bentoml serve`, as Kubernetes sends it), is waited
                  for, and is started again on its port once the other one serves (a rolling restart)
  --mode kill     one replica's processes are killed (SIGKILL) and a new one is started at once

HAProxy runs deploy/haproxy/haproxy.cfg as it is (health checks on /readyz, retries of failed connections
only). Locust's users send one real test digit per request through it and check every answer. The report
(printed, and report.json under --out) says how many requests failed and when each replica stopped and
answered again. The load lasts at least --seconds, and until every event has finished and TAIL_S more:
on a slow machine a restart takes longer, and the run waits for it. Exits 1 when a rolling restart lost a request.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import signal
import subprocess
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import psutil

from loadtest.run import prepare_digits, swarm
from loadtest.server import HOST, MODEL_HELP, bentoml_serve, free_port, model_file, start, stop_tree, wait_ready
from mnist import DEFAULT_ROOT
from serving.runtime import CapsNetRuntime

HAPROXY_CONFIG = Path(__file__).resolve().parent.parent / "deploy" / "haproxy" / "haproxy.cfg"
MODES = ("rolling", "kill")
SETTLE_S = 2.0  # after a replica is ready again, before the next one goes: HAProxy's `rise 2` at 0.5 s
TAIL_S = 3.0  # load after the last event, so that what follows a restart is measured too
QUICK = {"seconds": 12, "users": 4, "drain_seconds": 2.0}
BOUND_S = 600  # the longest a run may last, whatever its events take


@dataclass
class Replica:
    name: str
    port: int
    env: dict[str, str]
    log: Path
    proc: subprocess.Popen | None = None
    events: list[dict] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def start(self) -> None:
        self.proc = start(bentoml_serve(self.port), self.env, open(self.log, "a"))

    def wait_ready(self, timeout: float = 120) -> None:
        wait_ready(self.url, timeout, self.proc, interval=0.05)

    def terminate(self) -> int:
        """SIGTERM to `bentoml serve` only (its workers get it from it); returns its exit code."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=120)

    def kill(self) -> None:
        """SIGKILL to `bentoml serve` and its workers at once, as when its machine or container dies."""
        assert self.proc is not None
        tree = [psutil.Process(self.proc.pid), *psutil.Process(self.proc.pid).children(recursive=True)]
        for p in tree:
            p.kill()
        psutil.wait_procs(tree)
        self.proc.wait()

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            stop_tree(self.proc)


def answers(url: str, body: bytes) -> bool:
    request = urllib.request.Request(url + "/classify", data=body,
                                     headers={"Content-Type": "application/octet-stream"})
    try:
        with urllib.request.urlopen(request, timeout=5) as r:
            return r.status == 200
    except OSError:
        return False


def rolling_restart(replicas: list[Replica], started: float, first_at: float) -> None:
    """Restart each replica in turn: SIGTERM, wait for its exit, start it, wait until it is ready; the next one
    SETTLE_S after."""
    time.sleep(max(0.0, started + first_at - time.time()))
    for replica in replicas:
        t0 = time.time()
        code = replica.terminate()
        t1 = time.time()
        replica.start()
        replica.wait_ready()
        t2 = time.time()
        replica.events.append({"event": "rolling restart", "sigterm_at_s": round(t0 - started, 2),
                               "exited_after_s": round(t1 - t0, 2), "exit_code": code,
                               "ready_again_after_s": round(t2 - t0, 2), "start_s": round(t2 - t1, 2)})
        if replica is not replicas[-1]:
            time.sleep(SETTLE_S)


def kill_and_replace(replica: Replica, started: float, when: float, probe: bytes) -> None:
    """SIGKILL a replica and start its replacement at once; time its /readyz and its first answer."""
    time.sleep(max(0.0, started + when - time.time()))
    t0 = time.time()
    replica.kill()
    replica.start()
    replica.wait_ready()
    t1 = time.time()
    while not answers(replica.url, probe):
        time.sleep(0.02)
    t2 = time.time()
    replica.events.append({"event": "SIGKILL, replacement started", "killed_at_s": round(t0 - started, 2),
                           "replacement_ready_after_s": round(t1 - t0, 2),
                           "replacement_answered_after_s": round(t2 - t0, 2)})


def run(args: argparse.Namespace) -> dict:
    haproxy = shutil.which(args.haproxy)
    if haproxy is None:
        raise SystemExit(f"{args.haproxy}: not found; install HAProxy (Debian: apt-get install haproxy)")
    args.out.mkdir(parents=True, exist_ok=True)
    runtime = CapsNetRuntime(args.model, "cpu", 1, "auto")
    digits = args.out / "digits.npz"
    prepare_digits(digits, runtime, 512, args.data)
    probe = np.load(digits)["images"][:1].astype("<f4").tobytes()  # one digit, raw float32
    service_env = {"CAPSNET_MODEL": str(args.model.resolve()), "CAPSNET_WORKERS": "1",
                   "CAPSNET_DRAIN_SECONDS": str(args.drain_seconds)}
    replicas = [Replica(f"replica{i}", free_port(), service_env, args.out / f"replica{i}.log") for i in (1, 2)]
    front = free_port()
    proxy = None
    try:
        for replica in replicas:
            replica.start()
        for replica in replicas:
            replica.wait_ready()
        proxy = subprocess.Popen(
            [haproxy, "-f", str(HAPROXY_CONFIG), "-db"],
            env={**os.environ, "CAPSNET_FRONT": f"{HOST}:{front}",
                 **{f"CAPSNET_REPLICA_{i}": f"{HOST}:{r.port}" for i, r in enumerate(replicas, 1)}},
            stdout=open(args.out / "haproxy.log", "w"), stderr=subprocess.STDOUT)
        front_url = f"http://{HOST}:{front}"
        wait_ready(front_url, 30, proxy, interval=0.05)
        load_env = {"CAPSNET_DIGITS": str(digits.resolve()), "CAPSNET_LOAD_IMAGES": "1", "CAPSNET_LOAD_BODY": "octets"}
        result: dict = {}
        stop = threading.Event()
        load = threading.Thread(target=lambda: result.update(swarm(front_url, args.users, BOUND_S, args.out,
                                                                  load_env, stop=stop, server_split=False)))
        started = time.time()
        load.start()
        if args.mode == "rolling":
            rolling_restart(replicas, started, 0.15 * args.seconds)
        else:
            kill_and_replace(replicas[0], started, 0.25 * args.seconds, probe)
        events_done = time.time() - started
        time.sleep(max(TAIL_S, started + args.seconds - time.time()))
        stop.set()
        load.join()
    finally:
        if proxy is not None:
            proxy.terminate()
            proxy.wait()
        for replica in replicas:
            replica.close()
    report = {"mode": args.mode, "replicas": len(replicas), "users": args.users,
              "seconds": result.get("duration_s"), "drain_seconds": args.drain_seconds,
              "events_finished_at_s": round(events_done, 2),
              "requests": result.get("requests", 0), "failures": result.get("failures"),
              "requests_per_s": result.get("requests_per_s"), "p50_ms": result.get("p50_ms"),
              "p99_ms": result.get("p99_ms"), "events": [e | {"replica": r.name} for r in replicas for e in r.events],
              "failure_kinds": failure_kinds(args.out / f"locust-u{args.users}_failures.csv")}
    (args.out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    return report


def failure_kinds(path: Path) -> dict[str, int]:
    """Locust's failures CSV as {error: count}."""
    if not path.exists():
        return {}
    with open(path) as f:
        return {row["Error"]: int(row["Occurrences"]) for row in csv.DictReader(f)}


def summary(report: dict) -> str:
    what = "rolling restart" if report["mode"] == "rolling" else "one replica SIGKILLed"
    lines = [f"{what}: {report['replicas']} replicas behind HAProxy, {report['users']} Locust users for"
             f" {report['seconds']} s, one digit per request, drain window {report['drain_seconds']:g} s"]
    for e in report["events"]:
        if report["mode"] == "rolling":
            lines.append(f"  {e['replica']}: SIGTERM at {e['sigterm_at_s']:.1f} s, exited {e['exit_code']} after"
                         f" {e['exited_after_s']:.1f} s, ready again {e['ready_again_after_s']:.1f} s after the signal"
                         f" (start-up {e['start_s']:.1f} s)")
        else:
            lines.append(f"  {e['replica']}: SIGKILL at {e['killed_at_s']:.1f} s; its replacement ready after"
                         f" {e['replacement_ready_after_s']:.2f} s, answering after {e['replacement_answered_after_s']:.2f} s")
    kinds = "".join(f"; {n} x {error}" for error, n in report["failure_kinds"].items())
    lines.append(f"  {report['requests']:,} requests, {report['failures']} failed{kinds}"
                 f" ({report['requests_per_s']} req/s, p50 {report['p50_ms']:g} ms, p99 {report['p99_ms']:g} ms)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m loadtest.replicas", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--mode", choices=MODES, default="rolling", help="rolling restart, or one replica SIGKILLed")
    p.add_argument("--seconds", type=int, default=60,
                   help=f"the Locust run's least length (it goes on until the events have finished, and {TAIL_S:g} s more)")
    p.add_argument("--users", type=int, default=8, help="Locust users, one digit per request")
    p.add_argument("--drain-seconds", type=float, default=5.0, help="the replicas' CAPSNET_DRAIN_SECONDS")
    p.add_argument("--model", type=model_file, default="models/capsnet-mnist.onnx", help=MODEL_HELP)
    p.add_argument("--haproxy", default="haproxy", help="the HAProxy binary")
    p.add_argument("--data", type=Path, default=DEFAULT_ROOT, help="MNIST root folder")
    p.add_argument("--out", type=Path, default=Path("runs/replicas"), help="logs, Locust's CSVs, report.json")
    p.add_argument("--quick", action="store_true",
                   help=f"a short run for the tests: {QUICK['seconds']} s, {QUICK['users']} users,"
                        f" {QUICK['drain_seconds']:g} s drain")
    args = p.parse_args(argv)
    if args.quick:
        args.seconds, args.users, args.drain_seconds = QUICK["seconds"], QUICK["users"], QUICK["drain_seconds"]
    report = run(args)
    print(summary(report))
    print(f"report: {args.out / 'report.json'}")
    if args.mode == "rolling" and report["failures"] != 0:
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
