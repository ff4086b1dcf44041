"""python -m fuzz.outside: a black-box fuzz of every route of a real `bentoml serve`, from outside, over HTTP.

The seeds of fuzz/seeds.py, each sent to the route that takes it, mutated at random (bytes flipped, inserted,
deleted, repeated, cut; the Content-Type changed, the Inference-Header-Content-Length too), or sent to another
route or with another method, from
several client threads for --seconds. A 5xx, a request unanswered within --timeout (a hang) or a traceback in
the service's log is a finding; the command prints the statuses it got and exits 1 on any finding.

    python -m fuzz.outside --seconds 180      # starts its own service (the published model) on a free port
"""

from __future__ import annotations

import argparse
import collections
import random
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

from fuzz.seeds import BOUNDARY, seeds
from loadtest.server import running_service
from mnist import read_split

ROOT = Path(__file__).resolve().parents[1]
V2 = "/v2/models/capsnet/infer"
# each seed set -> the route and Content-Type it is sent with (a v2 binary seed: its first 6 bytes are the header)
ROUTES = {"octets": ("/classify", "application/octet-stream"), "json": ("/classify", "application/json"),
          "v2-json": (V2, "application/json"), "v2-binary": (V2, "application/octet-stream"),
          "multipart": ("/classify_image", f"multipart/form-data; boundary={BOUNDARY}"),
          "image": ("/ui/predict", f"multipart/form-data; boundary={BOUNDARY}")}
OTHER_ROUTES = ["/reconstruct", "/explain", "/metadata", "/v2/models/capsnet", "/v2/models/capsnet/versions/int8/infer",
                "/v2/models/capsnet/versions/nine/infer", "/v2", "/readyz", "/livez", "/metrics", "/ui/", "/nowhere"]
CONTENT_TYPES = ["application/json", "application/octet-stream", "multipart/form-data", "text/plain", "", "image/png",
                 f"multipart/form-data; boundary={BOUNDARY}"]


def mutate(data: bytes, rng: random.Random) -> bytes:
    """data with 1 to 4 random edits."""
    out = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        edit, at = rng.randrange(6), rng.randrange(len(out) + 1)
        if edit == 0 and out:
            out[min(at, len(out) - 1)] ^= 1 << rng.randrange(8)
        elif edit == 1:
            out[at:at] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 8)))
        elif edit == 2:
            del out[at:at + rng.randint(1, 64)]
        elif edit == 3:
            out[at:at] = out[at:at + rng.randint(1, 64)] * rng.randint(2, 20)
        elif edit == 4:
            del out[at:]
        else:
            out[at:at] = rng.choice([b"NaN", b"1e400", b"-1", b"[[", b"]]", b'"', b"\x00", b"\xff\xfe", b"{}", b"null"])
    return bytes(out)


def request(rng: random.Random, corpus: dict[str, list[bytes]]) -> tuple[str, str, bytes, dict[str, str | bytes]]:
    """(method, path, body, headers) of one mutated request."""
    kind = rng.choice(list(ROUTES))
    path, content_type = ROUTES[kind]
    body = mutate(rng.choice(corpus[kind]), rng) if rng.random() < 0.9 else rng.choice(corpus[kind])
    headers: dict[str, str | bytes] = {"Content-Type": content_type}
    if kind == "v2-binary":
        value = bytes(b for b in body[:6] if 0x20 <= b != 0x7F).strip()  # what a header may hold: no control bytes
        headers["Inference-Header-Content-Length"], body = value or b"0", body[6:]  # bytes: httpx sends them as they are
    if rng.random() < 0.15:
        path = rng.choice(OTHER_ROUTES)
    if rng.random() < 0.1:
        headers["Content-Type"] = rng.choice(CONTENT_TYPES)
    method = "POST" if rng.random() < 0.95 else rng.choice(["GET", "PUT", "DELETE", "PATCH"])
    return method, path, body, headers


def fuzz(url: str, seconds: float, threads: int, timeout: float, seed: int, corpus: dict[str, list[bytes]]
         ) -> tuple[collections.Counter, list[str]]:
    """Statuses counted ("hang" and the transport errors too) and the findings (5xx and hangs, each described)."""
    statuses: collections.Counter = collections.Counter()
    findings: list[str] = []
    lock = threading.Lock()
    stop_at = time.monotonic() + seconds

    def client(index: int) -> None:
        rng = random.Random(seed * 1000 + index)
        with httpx.Client(base_url=url, timeout=timeout) as http:
            while time.monotonic() < stop_at:
                method, path, body, headers = request(rng, corpus)
                try:
                    status: int | str = http.request(method, path, content=body, headers=headers).status_code
                except httpx.TimeoutException:
                    status = "hang"
                except httpx.TransportError as err:  # the server closed the connection without an answer
                    status = type(err).__name__
                with lock:
                    statuses[status] += 1
                    if status == "hang" or (isinstance(status, int) and status >= 500):
                        findings.append(f"{status} {method} {path} {headers} {body[:120]!r}")

    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(client, range(threads)))
    return statuses, findings


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m fuzz.outside", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--seconds", type=float, default=180, help="how long to send")
    p.add_argument("--threads", type=int, default=8, help="client threads")
    p.add_argument("--timeout", type=float, default=30, help="seconds without an answer that make a hang")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--model", default=str(ROOT / "models" / "capsnet-mnist.onnx"))
    p.add_argument("--data", type=Path, default=ROOT / "data", help="MNIST root folder (the seeds' digits)")
    p.add_argument("--log", type=Path, default=ROOT / "runs" / "fuzz-outside.log", help="the service's log")
    args = p.parse_args(argv)
    corpus = seeds(read_split("test", args.data, 2)[0])
    args.log.parent.mkdir(parents=True, exist_ok=True)
    with running_service(env={"CAPSNET_MODEL": args.model}, log=args.log) as service:
        statuses, findings = fuzz(service.url, args.seconds, args.threads, args.timeout, args.seed, corpus)
        ready = httpx.get(service.url + "/readyz", timeout=args.timeout).status_code
    tracebacks = args.log.read_text(errors="replace").count("Traceback")
    total = sum(statuses.values())
    print(f"{total:,} requests in {args.seconds:g} s: " + ", ".join(f"{k}: {v:,}" for k, v in sorted(
        statuses.items(), key=lambda kv: -kv[1])))
    print(f"5xx and hangs: {len(findings)}; tracebacks in the service's log ({args.log}): {tracebacks};"
          f" /readyz after: {ready}")
    for finding in findings[:20]:
        print("  " + finding)
    return 1 if findings or tracebacks or ready != 200 else 0


if __name__ == "__main__":
    sys.exit(main())
