"""python -m loadtest.slowclients: do slow clients hurt the others, and are they let go?

Starts the service (`bentoml serve`, its default settings unless told), times one-digit requests from a
normal client (keep-alive, one at a time) alone, then again while --connections other connections each
send half a request header and then one more byte every --byte-every seconds, from another process
(each opens a new one when the service closes it, so that --connections are held all through).
Reports p50/p99 of the normal requests in both phases, and for the slow connections when the service
closed them (counted from each one's start) and how many were answered 408. Writes report.json to --out.
Exits 1 when the p99 with slow connections is over --p99-ms or a slow connection outlived the read
deadline by more than a second.
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import multiprocessing
import statistics
import time
from pathlib import Path

import numpy as np

from loadtest.server import HOST, MODEL_HELP, model_file, running_service
from mnist import DEFAULT_ROOT, read_split
from serving.settings import Settings

HALF_HEADER = b"POST /classify HTTP/1.1\r\nHost: capsnet\r\nX-Slow: "


async def slow_connection(port: int, byte_every: float, until: float) -> list[dict]:
    """One slow client: it opens a connection and dribbles a header into it until the service closes it,
    then opens another, until `until` (monotonic time); one record per connection."""
    attempts = []
    while time.monotonic() < until:
        attempts.append(await one_slow_connection(port, byte_every, until))
    return attempts


async def one_slow_connection(port: int, byte_every: float, until: float) -> dict:
    started = time.monotonic()
    try:
        reader, writer = await asyncio.open_connection(HOST, port)
    except OSError as err:
        await asyncio.sleep(byte_every)
        return {"refused": str(err)}
    answer = b""
    try:
        writer.write(HALF_HEADER)
        while time.monotonic() < until:
            try:
                chunk = await asyncio.wait_for(reader.read(4096), byte_every)
            except asyncio.TimeoutError:
                writer.write(b"x")  # one more byte of the header
                continue
            if not chunk:
                break
            answer += chunk
    except OSError:
        pass
    closed = reader.at_eof() or writer.is_closing()
    writer.close()
    return {"closed_after_s": round(time.monotonic() - started, 3) if closed else None,
            "answered_408": answer.startswith(b"HTTP/1.1 408 ")}


def hold_slow_connections(port: int, count: int, byte_every: float, hold: float, results) -> None:
    """`count` slow clients at all times for `hold` seconds; puts every connection's record on `results`."""
    async def all_of_them() -> list[dict]:
        until = time.monotonic() + hold
        tasks = []
        for _ in range(count):  # opened over about a second, as they would arrive
            tasks.append(asyncio.create_task(slow_connection(port, byte_every, until)))
            await asyncio.sleep(1.0 / count)
        return [attempt for attempts in await asyncio.gather(*tasks) for attempt in attempts]

    results.put(asyncio.run(all_of_them()))


def time_requests(port: int, body: bytes, seconds: float) -> list[float]:
    """Latencies (ms) of one-digit requests sent one after another on one kept-alive connection."""
    conn = http.client.HTTPConnection(HOST, port, timeout=10)
    latencies = []
    stop = time.monotonic() + seconds
    while time.monotonic() < stop:
        t0 = time.perf_counter()
        conn.request("POST", "/classify", body=body, headers={"Content-Type": "application/octet-stream"})
        answer = conn.getresponse()
        answer.read()
        latencies.append((time.perf_counter() - t0) * 1000)
        if answer.status != 200:
            raise RuntimeError(f"a normal request got {answer.status}")
    conn.close()
    return latencies


def percentiles(latencies: list[float]) -> dict:
    return {"requests": len(latencies), "p50_ms": round(float(np.percentile(latencies, 50)), 2),
            "p99_ms": round(float(np.percentile(latencies, 99)), 2)}


def summary(report: dict, seconds: float) -> str:
    alone, beside, slow = report["alone"], report["beside_slow_connections"], report["slow"]
    after = slow["closed_after_s"]
    return "\n".join([
        f"{report['connections']} slow connections (half a header, then a byte every {report['byte_every_s']:g} s;"
        f" a new one when the service closes one), read deadline {report['read_timeout_s']:g} s",
        f"  one-digit requests, one client, {seconds:g} s alone:        {alone['requests']:,},"
        f" p50 {alone['p50_ms']:.2f} ms, p99 {alone['p99_ms']:.2f} ms",
        f"  the same beside the slow connections:       {beside['requests']:,},"
        f" p50 {beside['p50_ms']:.2f} ms, p99 {beside['p99_ms']:.2f} ms",
        f"  slow connections opened {report['slow_connections_opened']}, refused {slow['refused']},"
        f" closed by the service {slow['closed_by_service']} ({slow['answered_408']} answered 408) after"
        f" {after['min']}-{after['max']} s (the others were still open when the run ended)",
        f"  within targets: {report['within_targets']}"])


def main(argv: list[str] | None = None) -> int:
    defaults = Settings()
    p = argparse.ArgumentParser(prog="python -m loadtest.slowclients", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--connections", type=int, default=500, help="slow connections held open")
    p.add_argument("--byte-every", type=float, default=0.5, help="seconds between a slow connection's bytes")
    p.add_argument("--seconds", type=float, default=20, help="how long the normal client is timed in each phase")
    p.add_argument("--read-timeout", type=float, default=defaults.read_timeout,
                   help="the service's CAPSNET_READ_TIMEOUT")
    p.add_argument("--p99-ms", type=float, default=50, help="the p99 the normal requests must keep")
    p.add_argument("--model", type=model_file, default="models/capsnet-mnist.onnx", help=MODEL_HELP)
    p.add_argument("--data", type=Path, default=DEFAULT_ROOT, help="MNIST root folder")
    p.add_argument("--out", type=Path, default=Path("runs/slowclients"), help="service log and report.json")
    args = p.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    body = read_split("test", args.data, 1)[0][:1].astype("<f4").tobytes()
    env = {"CAPSNET_MODEL": str(args.model.resolve()), "CAPSNET_READ_TIMEOUT": str(args.read_timeout)}
    with running_service(env=env, log=args.out / "service.log") as service:
        port = int(service.url.rsplit(":", 1)[1])
        time_requests(port, body, 1.0)  # warm-up
        alone = time_requests(port, body, args.seconds)
        results: multiprocessing.Queue = multiprocessing.Queue()
        hold = 1.5 + args.seconds  # slow clients all through the timed phase, each reconnecting when closed
        holder = multiprocessing.Process(target=hold_slow_connections,
                                         args=(port, args.connections, args.byte_every, hold, results))
        holder.start()
        time.sleep(1.5)  # all of them open
        beside_slow = time_requests(port, body, args.seconds)
        slow = results.get(timeout=hold + 60)
        holder.join()
    closed = [s["closed_after_s"] for s in slow if s.get("closed_after_s") is not None]
    report = {"connections": args.connections, "slow_connections_opened": len(slow), "byte_every_s": args.byte_every, "read_timeout_s": args.read_timeout,
              "alone": percentiles(alone), "beside_slow_connections": percentiles(beside_slow),
              "slow": {"refused": sum(1 for s in slow if "refused" in s), "closed_by_service": len(closed),
                       "answered_408": sum(1 for s in slow if s.get("answered_408")),
                       "closed_after_s": {"min": min(closed, default=None), "median": statistics.median(closed) if closed else None,
                                          "max": max(closed, default=None)}}}
    report["within_targets"] = (report["beside_slow_connections"]["p99_ms"] < args.p99_ms
                                and bool(closed) and max(closed) <= args.read_timeout + 1)
    (args.out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    print(summary(report, args.seconds))
    print(f"report: {args.out / 'report.json'}")
    return 0 if report["within_targets"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
