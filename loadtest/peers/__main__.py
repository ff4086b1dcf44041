"""python -m loadtest.peers: the service against the serving peers a user would pick instead, side by side.

Each server serves the published int8 model with one ONNX Runtime thread, pinned to --server-core, in its
own native request format (the table says which); wrk, a compiled client, loads it from --client-core.
Three bodies: 1 digit as JSON, 1 digit binary, 8 digits binary (a peer without a binary form gets its
JSON). Every server's answers are checked for the right labels (in-process ONNX Runtime's) before it is
timed. The servers run one at a time; in-process ONNX Runtime on the same core is sampled before and
after each, and each row's images/s is given as a share of it. Writes peers.json and peers.md under --out.

  service     this project: `bentoml serve`, /classify (JSON; raw float32) and the Open Inference
              Protocol (/v2/.../infer: JSON tensors; binary tensors), the same worker and batcher
  pytriton    NVIDIA PyTriton: the real tritonserver, its dynamic batcher, the v2 protocol (JSON; binary)
  kserve      KServe's Python model server (a kserve.Model), the v2 protocol (JSON; binary); no batching in it
  litserve    LitServe with its batching: JSON only
  rayserve    Ray Serve with @serve.batch: JSON; raw float32 (a deployment reads the request as it likes)
  bentoml     BentoML's own batchable API (numpy in and out): JSON only
  reference   30 lines of Starlette + ONNX Runtime, one run per request (loadtest/reference.py)

Over gRPC, the Open Inference Protocol's ModelInfer with raw contents, 1 digit and 8 (the service, PyTriton's
tritonserver and KServe's server): h2load, a compiled HTTP/2 client, sends gRPC's frames (loadtest/grpc_load.py).

The peers' packages live in venvs of their own (`make peers-setup`): .venv-peers (the `peers` extra:
nvidia-pytriton, litserve, ray[serve] and the same onnxruntime-gpu; PyTriton holds numpy below 2) and
.venv-kserve (the `kserve-peer` extra: KServe pins its own FastAPI and protobuf); a peer whose package is
missing is left out, and said so.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from loadtest.forms import FORMS, Form
from loadtest.grpc_load import call, h2load, infer_body
from loadtest.pinned import PERCENTILES_LUA, InProcess, combine, cpu_seconds, in_process_summary, split_cells, wrk
from loadtest.prometheus import scrape, split
from loadtest.server import MODEL_HELP, bentoml_serve, free_port, model_file, started
from mnist import DEFAULT_ROOT, read_split

ROOT = Path(__file__).resolve().parents[2]
PEERS_PYTHON = ROOT / ".venv-peers" / "bin" / "python"  # make peers-setup: PyTriton holds numpy below 2
BODIES = {"1 digit, JSON": (1, False), "1 digit, binary": (1, True), "8 digits, binary": (8, True)}
GRPC_BODIES = {"1 digit, gRPC": 1, "8 digits, gRPC": 8}  # ModelInfer, raw contents (h2load)
GRPC_FORM = "ModelInfer, raw contents"
LUA = """wrk.method = "POST"
{headers}
local f = io.open("{body}", "rb"); wrk.body = f:read("*a"); f:close()
""" + PERCENTILES_LUA.replace("{", "{{").replace("}", "}}")


@dataclass(frozen=True)
class Peer:
    name: str
    package: str | None  # the module that must import for this peer to run
    ready: str  # the health route that answers 200 once it serves
    forms: dict[str, tuple[str, ...]]  # body -> its native formats for that body (FORMS' names)
    grpc: bool = False  # whether it speaks the Open Inference Protocol over gRPC too
    venv: str | None = None  # a venv of its own, where its pins conflict with .venv-peers'
    startup_s: float = 180

    def python(self, peers_python: str) -> str:
        if self.package is None:
            return sys.executable
        return str(ROOT / self.venv / "bin" / "python") if self.venv else peers_python

    def command(self, model: Path, port: int, grpc_port: int, threads: int, peers_python: str
                ) -> tuple[list[str], dict[str, str]]:
        python = self.python(peers_python)
        if self.name == "service":
            return (bentoml_serve(port, python=python),
                    {"CAPSNET_MODEL": str(model), "CAPSNET_VARIANT": "int8", "CAPSNET_DEVICE": "cpu",
                     "CAPSNET_WORKERS": "1", "CAPSNET_THREADS": str(threads), "CAPSNET_GRPC_PORT": str(grpc_port)})
        if self.name == "bentoml":
            return (bentoml_serve(port, "loadtest.peers.bentoml_peer:Peer", python),
                    {"PEER_MODEL": str(int8_file(model)), "PEER_THREADS": str(threads)})
        module = "loadtest.reference" if self.name == "reference" else f"loadtest.peers.{self.name}_peer"
        env = {"LD_LIBRARY_PATH": libpython_dir(python)} if self.name == "pytriton" else {}
        return [python, "-m", module, "--model", str(int8_file(model)), "--port", str(port),
                *(["--grpc-port", str(grpc_port)] if self.grpc else []), "--threads", str(threads)], env


def libpython_dir(python: str) -> str:
    """Where `python`'s own libpython is: Triton's Python backend stub links libpython3.x.so and must find this one,
    not another 3.x's (the system's), whose C parts would not match the standard library it then imports."""
    found = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_config_var('LIBDIR'))"],
                           capture_output=True, text=True).stdout.strip()
    return ":".join(filter(None, [found, os.environ.get("LD_LIBRARY_PATH", "")]))


def int8_file(model: Path) -> Path:
    return model.with_name(model.stem + "-int8.onnx")


CLASSIFY_FORMS = {"1 digit, JSON": ("classify-json",), "1 digit, binary": ("classify-raw",),
                  "8 digits, binary": ("classify-raw",)}
V2_FORMS = {"1 digit, JSON": ("v2-json",), "1 digit, binary": ("v2-binary",), "8 digits, binary": ("v2-binary",)}
PEERS = {p.name: p for p in [
    # the service's two APIs, in one process (serving/v2.py must keep up with /classify)
    Peer("service", None, "/readyz", {body: CLASSIFY_FORMS[body] + V2_FORMS[body] for body in BODIES}, grpc=True),
    Peer("pytriton", "pytriton", "/v2/models/capsnet/ready", V2_FORMS, grpc=True),
    Peer("kserve", "kserve", "/v2/models/capsnet/ready", V2_FORMS, grpc=True, venv=".venv-kserve"),
    Peer("litserve", "litserve", "/health", {body: ("litserve-json",) for body in BODIES}),
    Peer("rayserve", "ray.serve", "/-/healthz", CLASSIFY_FORMS),
    Peer("bentoml", None, "/readyz", {body: ("bentoml-json",) for body in BODIES}),
    Peer("reference", None, "/readyz", CLASSIFY_FORMS),
]}
QUICK_PEERS = ["service", "pytriton", "kserve"]


def installed(peer: Peer, peers_python: str) -> bool:
    """Whether the peer's package imports in the Python that runs it."""
    if peer.package is None:
        return True
    python = peer.python(peers_python)
    check = f"import importlib.util, sys; sys.exit(importlib.util.find_spec({peer.package.split('.')[0]!r}) is None)"
    return Path(python).exists() and subprocess.run([python, "-c", check], capture_output=True).returncode == 0


@contextmanager
def running(peer: Peer, model: Path, core: int, threads: int, log: Path, peers_python: str
            ) -> Iterator[tuple[str, int, str]]:
    """The peer's server pinned to `core`; yields its URL, pid and gRPC target ("" when it speaks no gRPC), and
    stops it and its children afterwards."""
    port, grpc_port = free_port(), free_port()
    command, env = peer.command(model.resolve(), port, grpc_port, threads, peers_python)
    begun = time.time()
    # PyTriton does not stop on SIGTERM: killed after 2 s
    with started(command, port, env, log, peer.startup_s, peer.ready, {core}, ROOT, stop_timeout=2) as proc:
        print(f"peers: {peer.name} ready in {time.time() - begun:.1f} s", file=sys.stderr)
        yield f"http://127.0.0.1:{port}", proc.pid, f"127.0.0.1:{grpc_port}" if peer.grpc else ""


def post(url: str, body: bytes, headers: dict[str, str]) -> tuple[bytes, dict[str, str]]:
    request = urllib.request.Request(url, data=body, headers=headers)
    with urllib.request.urlopen(request, timeout=30) as r:
        return r.read(), {k.lower(): v for k, v in r.headers.items()}


def check_answers(peer: Peer, url: str, images: np.ndarray, expected: list[int]) -> None:
    """Every body's form gives the right labels for 8 real digits, one request at a time and all at once."""
    for form_name in {name for names in peer.forms.values() for name in names}:
        form = FORMS[form_name]
        for count in (1, 8):
            answer, headers = post(url + form.path, *form.body(images[:count]))
            got = form.labels(answer, headers)
            if got != expected[:count]:
                raise AssertionError(f"{peer.name}, {form.name}: labels {got}, expected {expected[:count]}")


def write_script(stem: Path, form: Form, images: np.ndarray) -> Path:
    """wrk's Lua script that POSTs this form's body for these images (the body in a file beside it)."""
    data, headers = form.body(images)
    stem.with_suffix(".body").write_bytes(data)
    stem.with_suffix(".lua").write_text(LUA.format(body=stem.with_suffix(".body"), headers="\n".join(
        f'wrk.headers["{k}"] = "{v}"' for k, v in headers.items())))
    return stem.with_suffix(".lua")


def measure(args: argparse.Namespace) -> dict:
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is missing: apt-get install wrk (Debian's package)")
    args.out.mkdir(parents=True, exist_ok=True)
    images = read_split("test", args.data, 64)[0][:, None]
    in_process = InProcess(args.model, "int8", {args.server_core}, images)
    expected = in_process.runtime.predict(images[:8]).labels.tolist()
    rates = {batch: in_process.rate(batch, args.in_process_seconds) for batch in (1, 8, 16, 32)}
    best_batch = max(rates, key=rates.get)
    samples = [rates[best_batch]]
    rows, left_out = [], []
    for name in args.peers:
        peer = PEERS[name]
        if not installed(peer, args.peers_python):
            left_out.append(f"{name} ({peer.package} is not installed in {peer.python(args.peers_python)}:"
                            " make peers-setup)")
            print(f"peers: {left_out[-1]}", file=sys.stderr)
            continue
        log = args.out / f"{name}.log"
        with running(peer, args.model, args.server_core, args.threads, log, args.peers_python) as (url, pid, grpc):
            check_answers(peer, url, images, expected)

            def timed(body: str, count: int, form: str, load: Callable[[float], dict]) -> None:
                """One row: `load(seconds)` once to warm up, then measured with the server's CPU time (and, for
                ours, the batcher's split from its /metrics over the same window)."""
                before = scrape(url) if name == "service" else None  # ours has the batcher's metrics
                cpu_before = cpu_seconds(pid)
                result = load(args.seconds)
                row = {**combine(name, body, count, [(result, cpu_seconds(pid) - cpu_before)]), "format": form,
                       "server_split": None if before is None else split(before, scrape(url))}
                rows.append(row)
                print(f"{name:10} {body:17} {form:26} {row['requests_per_s']:8.1f} req/s"
                      f" p99 {row['p99_ms']:.1f} ms  non-2xx {row['non_2xx']}", file=sys.stderr)

            for body, (count, _) in BODIES.items():
                forms = [FORMS[form_name] for form_name in peer.forms[body]]
                scripts = [write_script(args.out / f"{name}-{count}-{i}", form, images[:count]) for i, form in enumerate(forms)]
                for form, script in zip(forms, scripts):
                    if args.warmup > 0:
                        wrk(url, script, {args.client_core}, args.connections, args.warmup, form.path)
                for form, script in zip(forms, scripts):
                    timed(body, count, form.name, lambda seconds, script=script, form=form: wrk(
                        url, script, {args.client_core}, args.connections, seconds, form.path))
            for body, count in GRPC_BODIES.items() if grpc else ():
                message = infer_body(images[:count])
                lengths, answer_bytes = call(grpc, message)
                if lengths.argmax(1).tolist() != expected[:count]:
                    raise AssertionError(f"{name}, gRPC: labels {lengths.argmax(1).tolist()}, expected {expected[:count]}")
                def load(seconds: float, message: bytes = message, answer_bytes: int = answer_bytes) -> dict:
                    return h2load(grpc, message, answer_bytes, {args.client_core}, args.connections, seconds)
                if args.warmup > 0:
                    load(args.warmup)
                timed(body, count, GRPC_FORM, load)
        samples.append(in_process.rate(best_batch, args.in_process_seconds))
    model_rate = sum(samples) / len(samples)
    for row in rows:
        row["share_of_in_process"] = round(row["images_per_s"] / model_rate, 3)
    return {"in_process_images_per_s": round(model_rate, 1), "in_process_batch": best_batch,
            "in_process_samples": [round(r, 1) for r in samples], "server_core": args.server_core,
            "client_core": args.client_core, "connections": args.connections, "seconds": args.seconds,
            "threads": args.threads, "rows": rows, "left_out": left_out}


def markdown(report: dict) -> str:
    lines = [in_process_summary(report, f"int8, {report['threads']} thread, core {report['server_core']}") +
             f" Each server alone on core"
             f" {report['server_core']}, wrk on core {report['client_core']}, {report['connections']} connections,"
             f" {report['seconds']:g} s per body.", ""]
    for body in [*BODIES, *GRPC_BODIES]:
        if not any(r["body"] == body for r in report["rows"]):
            continue
        client = "h2load" if body in GRPC_BODIES else "wrk"
        lines += [f"**{body}** ({client})", "", "| server | its format | req/s | images/s | of in-process | p50 | p90 | p95 | p99 |"
                  " errors | queue | compute | batch |", "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in sorted((r for r in report["rows"] if r["body"] == body), key=lambda r: -r["images_per_s"]):
            lines.append(f"| {r['server']} | {r['format']} | {r['requests_per_s']:,.0f} | {r['images_per_s']:,.0f} |"
                         f" {r['share_of_in_process']:.0%} | {r['p50_ms']:.1f} ms | {r['p90_ms']:.1f} ms |"
                         f" {r['p95_ms']:.1f} ms | {r['p99_ms']:.1f} ms | {r['non_2xx']} | {split_cells(r)} |")
        lines.append("")
    if report["left_out"]:
        lines.append("Left out: " + "; ".join(report["left_out"]) + ".")
    return "\n".join(lines).rstrip()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m loadtest.peers", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--peers", nargs="+", choices=list(PEERS), default=list(PEERS), metavar="PEER",
                   help=f"the servers to measure, of: {', '.join(repr(n) for n in PEERS)}")
    p.add_argument("--model", type=model_file, default="models/capsnet-mnist.onnx",
                   help=MODEL_HELP + "; every server serves its int8 variant beside it")
    p.add_argument("--server-core", type=int, default=0, help="the core every server (and in-process ORT) runs on")
    p.add_argument("--client-core", type=int, default=1, help="wrk's core")
    p.add_argument("--threads", type=int, default=1, help="ONNX Runtime intra-op threads of every server")
    p.add_argument("--connections", type=int, default=16, help="wrk connections")
    p.add_argument("--seconds", type=float, default=10, help="measured seconds per server, body and format")
    p.add_argument("--warmup", type=float, default=2, help="unmeasured seconds before each (0: none)")
    p.add_argument("--in-process-seconds", type=float, default=1.5, help="seconds per in-process sample")
    p.add_argument("--peers-python", default=str(PEERS_PYTHON) if PEERS_PYTHON.exists() else sys.executable,
                   help="the Python that has the peers' packages (make peers-setup: .venv-peers)")
    p.add_argument("--data", type=Path, default=Path(DEFAULT_ROOT), help="MNIST root folder")
    p.add_argument("--out", type=Path, default=Path("runs/peers"), help="where the report goes")
    p.add_argument("--quick", action="store_true",
                   help=f"{' and '.join(QUICK_PEERS)} only, 1 s per body, no warm-up (what the tests run)")
    args = p.parse_args(argv)
    if args.quick:
        args.peers, args.seconds, args.warmup, args.in_process_seconds = QUICK_PEERS, 1, 0, 0.5
    report = measure(args)
    (args.out / "peers.json").write_text(json.dumps(report, indent=1) + "\n")
    (args.out / "peers.md").write_text(markdown(report) + "\n")
    print(markdown(report))
    failed = [(r["server"], r["body"]) for r in report["rows"] if r["non_2xx"] or not r["requests"]]
    if failed:
        print(f"FAILED: non-2xx answers or no requests in {failed}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
