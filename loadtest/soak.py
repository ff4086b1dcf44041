"""python -m loadtest.soak: a mixed load at a share of the service's measured peak for a long time, watched for growth.

Starts the service (`bentoml serve`, its default settings), sends every prepared request once (each valid one's
labels become what it must answer all through; each bad one must get a 4xx), finds the peak of the mix with
--peak-users clients sending back to back for --peak-seconds, then sends the mix at --share of that peak, open
loop (each request starts at its time on a fixed schedule, whatever the answers before it do), for --minutes.
The mix, per 20 requests: 7 one-digit JSON /classify, 4 eight-digit raw float32 /classify, 3 PNG uploads to
/classify_image, 4 one-digit v2 JSON tensors, 2 bad requests (malformed JSON, a body of the wrong size, a wrong
shape, an upload that is not an image, a v2 tensor of the wrong datatype).

Each minute it records, for each process of the service (`bentoml serve` and its workers), the highest resident
memory, open file descriptors and threads sampled in it (every second); for the requests started in that minute, the count, p50/p99 of the valid
ones, errors on valid ones (anything but a 200 with the labels it gave at the start) and bad ones not answered
with a 4xx; and the batcher's queue/compute split from /metrics. Writes soak.json and soak.png to --out.
Exits 1 on an error, or when a process's memory, descriptors or threads at the end are more than --growth above
their value at minute --baseline-minute (each the median of the highs of the 5 windows up to it). --report reads a
soak.json again and gives its summary and verdict without a service.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import psutil

from loadtest.forms import FORMS, labels_field, labels_v2
from loadtest.prometheus import scrape, split
from loadtest.server import MODEL_HELP, model_file, running_service
from mnist import DEFAULT_ROOT, read_split

MIX = {"json-1": 7, "binary-8": 4, "upload": 3, "v2-json": 4, "bad": 2}  # per 20 requests
PREPARED = 32  # different requests of each valid kind
MAX_IN_FLIGHT = 512  # past it the client, not the service, is behind: a request is skipped and counted
TIMEOUT_S = 30.0
SAMPLE_S = 1.0  # how often the service's processes are sampled
SPAN = 5  # windows whose median is a process's value at the baseline and at the end


@dataclass(frozen=True)
class Request:
    kind: str
    path: str
    body: bytes
    headers: dict[str, str]
    labels: tuple[int, ...] | None = None  # what a valid request must answer; None for a bad one


def multipart(png: bytes, name: str = "image") -> tuple[bytes, dict[str, str]]:
    """A form with one file field, as a browser sends it."""
    boundary = "capsnet-soak-boundary"
    body = (f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; filename="digit.png"\r\n'
            f"Content-Type: image/png\r\n\r\n").encode() + png + f"\r\n--{boundary}--\r\n".encode()
    return body, {"Content-Type": f"multipart/form-data; boundary={boundary}"}


def png(image: np.ndarray) -> bytes:
    from PIL import Image

    out = io.BytesIO()
    Image.fromarray((image * 255).round().astype(np.uint8)).save(out, "PNG")
    return out.getvalue()


def prepared(images: np.ndarray) -> list[Request]:
    """PREPARED requests of each valid kind (no labels yet) and one of each bad request. images: (N, 1, 28, 28)."""
    requests = []
    for i in range(PREPARED):
        one, eight = images[i:i + 1], images[8 * i:8 * i + 8]
        requests += [Request("json-1", "/classify", *FORMS["classify-json"].body(one)),
                     Request("binary-8", "/classify", *FORMS["classify-raw"].body(eight)),
                     Request("upload", "/classify_image", *multipart(png(images[i, 0]))),
                     Request("v2-json", FORMS["v2-json"].path, *FORMS["v2-json"].body(one))]
    v2_int = FORMS["v2-json"].body(images[:1])[0].replace(b'"FP32"', b'"INT64"')
    json_type = {"Content-Type": "application/json"}
    requests += [Request("bad", "/classify", b'{"images": [[0.5, ', json_type),
                 Request("bad", "/classify", b"\0" * 1000, {"Content-Type": "application/octet-stream"}),
                 Request("bad", "/classify", json.dumps({"images": [[[0.5] * 27] * 27]}).encode(), json_type),
                 Request("bad", "/classify_image", *multipart(b"not an image")),
                 Request("bad", FORMS["v2-json"].path, v2_int, json_type)]
    return requests


def labels(request: Request, body: bytes, headers: dict[str, str]) -> tuple[int, ...]:
    if request.kind == "upload":
        return (json.loads(body)["label"],)
    read = labels_v2 if request.kind == "v2-json" else labels_field
    return tuple(read(body, headers))


def schedule(requests: list[Request], seed: int = 0) -> list[Request]:
    """The order requests are sent in: the mix's shares over 20 * PREPARED requests, shuffled (the same each run)."""
    by_kind = {kind: [r for r in requests if r.kind == kind] for kind in MIX}
    order = [by_kind[kind][i % len(by_kind[kind])] for kind, share in MIX.items() for i in range(share * PREPARED)]
    random.Random(seed).shuffle(order)
    return order


@dataclass
class Minute:
    """The requests started in one minute and how they went."""
    sent: int = 0
    valid: int = 0
    bad: int = 0
    valid_errors: int = 0
    bad_not_4xx: int = 0
    skipped: int = 0
    latencies_ms: list[float] = field(default_factory=list)
    examples: list[str] = field(default_factory=list)

    def error(self, why: str) -> None:
        if len(self.examples) < 3:
            self.examples.append(why[:300])


async def send(session, url: str, request: Request, minute: Minute) -> None:
    """One request; what came of it goes into `minute`."""
    import aiohttp

    minute.sent += 1
    started = time.perf_counter()
    try:
        async with session.post(url + request.path, data=request.body, headers=request.headers,
                                timeout=aiohttp.ClientTimeout(total=TIMEOUT_S)) as answer:
            body = await answer.read()
            status, headers = answer.status, {k.lower(): v for k, v in answer.headers.items()}
    except (aiohttp.ClientError, asyncio.TimeoutError) as err:
        status, body, headers = 0, repr(err).encode(), {}
    elapsed_ms = (time.perf_counter() - started) * 1000
    if request.labels is None:
        minute.bad += 1
        if not 400 <= status < 500:
            minute.bad_not_4xx += 1
            minute.error(f"bad {request.path}: {status} {body[:200]!r}")
        return
    minute.valid += 1
    minute.latencies_ms.append(elapsed_ms)
    why = None if status == 200 else f"{status} {body[:200]!r}"
    if why is None:
        try:
            if labels(request, body, headers) != request.labels:
                why = f"labels {labels(request, body, headers)} instead of {request.labels}"
        except (ValueError, KeyError, TypeError) as err:
            why = f"unreadable answer ({err}): {body[:200]!r}"
    if why:
        minute.valid_errors += 1
        minute.error(f"{request.kind} {request.path}: {why}")


async def first_answers(session, url: str, requests: list[Request]) -> list[Request]:
    """Each request sent once: a valid one's labels recorded; RuntimeError when a valid one fails or a bad one
    is not refused with a 4xx."""
    kept = []
    for request in requests:
        async with session.post(url + request.path, data=request.body, headers=request.headers) as answer:
            body, headers = await answer.read(), {k.lower(): v for k, v in answer.headers.items()}
            if request.kind == "bad":
                if not 400 <= answer.status < 500:
                    raise RuntimeError(f"a bad request to {request.path} got {answer.status}: {body[:200]!r}")
                kept.append(request)
                continue
            if answer.status != 200:
                raise RuntimeError(f"{request.kind} to {request.path} got {answer.status}: {body[:200]!r}")
            kept.append(Request(**{**asdict(request), "labels": labels(request, body, headers)}))
    return kept


async def closed_loop(session, url: str, order: list[Request], users: int, seconds: float) -> Minute:
    """`users` clients each sending the mix back to back for `seconds`: how many were answered, and how."""
    done = Minute()
    until = time.perf_counter() + seconds

    async def user(offset: int) -> None:
        i = offset
        while time.perf_counter() < until:
            await send(session, url, order[i % len(order)], done)
            i += users

    await asyncio.gather(*(user(k) for k in range(users)))
    return done


def process_sample(pid: int) -> dict[str, dict]:
    """Each process of the service: its role, resident memory (MB), open file descriptors and threads."""
    root = psutil.Process(pid)
    sample = {}
    for p in [root, *root.children(recursive=True)]:
        try:
            with p.oneshot():
                role = "bentoml serve" if p.pid == pid else ("worker" if "worker" in " ".join(p.cmdline()) else p.name())
                sample[str(p.pid)] = {"role": role, "rss_mb": round(p.memory_info().rss / 2**20, 1),
                                      "fds": p.num_fds(), "threads": p.num_threads()}
        except psutil.NoSuchProcess:
            pass
    return sample


def highest(samples: list[dict[str, dict]]) -> dict[str, dict]:
    """Per process, the highest memory, descriptors and threads of several samples: a window's high-water mark
    (one sample alone catches a pool's thread or a connection's descriptor coming or going)."""
    high: dict[str, dict] = {}
    for sample in samples:
        for pid, now in sample.items():
            high[pid] = {key: max(value, high.get(pid, now)[key]) if key != "role" else value
                         for key, value in now.items()}
    return high


def summary_of(minute: Minute) -> dict:
    lat = minute.latencies_ms
    return {"sent": minute.sent, "valid": minute.valid, "bad": minute.bad, "valid_errors": minute.valid_errors,
            "bad_not_4xx": minute.bad_not_4xx, "skipped": minute.skipped,
            "p50_ms": round(float(np.percentile(lat, 50)), 1) if lat else None,
            "p99_ms": round(float(np.percentile(lat, 99)), 1) if lat else None, "examples": minute.examples}


async def send_at_rate(session, url: str, order: list[Request], rate: float, start: float, buckets: list[Minute],
                       minute_s: float) -> None:
    """The mix at `rate` requests/s from `start` (the loop's clock), each request into the bucket of the window it
    starts in; returns once every one has been answered."""
    loop = asyncio.get_running_loop()
    in_flight: set[asyncio.Task] = set()
    for i in range(int(len(buckets) * minute_s * rate)):
        due = start + i / rate
        if due > loop.time():
            await asyncio.sleep(due - loop.time())
        bucket = buckets[min(int((due - start) / minute_s), len(buckets) - 1)]
        if len(in_flight) >= MAX_IN_FLIGHT:
            bucket.skipped += 1
            continue
        task = asyncio.create_task(send(session, url, order[i % len(order)], bucket))
        in_flight.add(task)
        task.add_done_callback(in_flight.discard)
    await asyncio.gather(*in_flight)


async def watch(url: str, pid: int, start: float, buckets: list[Minute], minute_s: float) -> list[dict]:
    """Each window's high-water mark of the service's processes (sampled every SAMPLE_S) and its batcher's split
    (/metrics at its start and end); a line of progress at the end of each."""
    loop = asyncio.get_running_loop()
    windows = []
    before = scrape(url)
    for m in range(len(buckets)):
        end, samples = start + (m + 1) * minute_s, []
        while True:
            samples.append(process_sample(pid))
            if loop.time() >= end:
                break
            await asyncio.sleep(min(SAMPLE_S, end - loop.time()))
        after = scrape(url)
        windows.append({"minute": m + 1, "processes": highest(samples), "server": split(before, after)})
        before = after
        print(f"soak: window {m + 1}/{len(buckets)}: {row(windows[-1], summary_of(buckets[m - 1]) if m else None)}",
              flush=True)
    return windows


async def open_loop(session, url: str, pid: int, order: list[Request], rate: float, minutes: int,
                    minute_s: float) -> list[dict]:
    """The mix at `rate` requests/s for `minutes` windows of `minute_s` seconds, watched; one record per window
    (its processes' high-water marks, and the requests started in it, once all of them have been answered)."""
    buckets = [Minute() for _ in range(minutes)]
    start = asyncio.get_running_loop().time()
    windows, _ = await asyncio.gather(watch(url, pid, start, buckets, minute_s),
                                      send_at_rate(session, url, order, rate, start, buckets, minute_s))
    return [{**window, "requests": summary_of(bucket)} for window, bucket in zip(windows, buckets)]


def row(sample: dict, requests: dict | None) -> str:
    """A window's processes (and, once they are all answered, its requests) in one line."""
    procs = ", ".join(f"{p['role']} {p['rss_mb']:.0f} MB {p['fds']} fds {p['threads']} threads"
                      for p in sample["processes"].values())
    if requests is None:
        return procs
    return (f"{procs}; before it: {requests['sent']:,} sent, p50 {requests['p50_ms']} ms, p99 {requests['p99_ms']} ms,"
            f" {requests['valid_errors']} errors")


def growth(minutes: list[dict], baseline_minute: int, allowed: float, span: int = SPAN) -> list[str]:
    """What grew by more than `allowed` (a fraction) from window `baseline_minute` to the end, or a process that was
    there then and is gone: each as a sentence; [] when nothing did. A process's value at either point is the median
    of the high-water marks of the `span` windows up to it: a pool's thread that comes and goes all hour (13 to 16
    in the worker, in windows scattered over the hour) moves a single window by 7%, a leak moves them all."""
    base = minutes[max(0, baseline_minute - span):baseline_minute]
    end = minutes[-span:]
    grew = []
    for pid, then in base[-1]["processes"].items():
        if pid not in end[-1]["processes"]:
            grew.append(f"{then['role']} {pid} is gone")
            continue
        for key in ("rss_mb", "fds", "threads"):
            before = float(np.median([m["processes"][pid][key] for m in base if pid in m["processes"]]))
            after = float(np.median([m["processes"][pid][key] for m in end if pid in m["processes"]]))
            if after > before * (1 + allowed):
                grew.append(f"{then['role']} {pid}: {key} {before:g} -> {after:g} (+{after / before - 1:.1%})")
    return grew


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    minutes = report["minutes"]
    x = [m["minute"] for m in minutes]
    fig, axes = plt.subplots(2, 2, figsize=(11, 7), sharex=True)
    for ax, key, label in ((axes[0, 0], "rss_mb", "resident memory (MB), highest in the window"),
                           (axes[0, 1], "fds", "open descriptors, highest"), (axes[1, 0], "threads", "threads, highest")):
        for pid, first in minutes[0]["processes"].items():
            ax.plot(x, [m["processes"].get(pid, {}).get(key, np.nan) for m in minutes], marker=".",
                    label=f"{first['role']} {pid}")
        ax.set_ylabel(label)
    ax = axes[1, 1]
    for key in ("p50_ms", "p99_ms"):
        ax.plot(x, [m["requests"][key] for m in minutes], marker=".", label=key.replace("_ms", ""))
    ax.set_ylabel("latency of valid requests (ms)")
    for ax in axes.flat:
        ax.set_ylim(bottom=0)  # after every line: it stops the axis from growing to fit later ones
        ax.legend(fontsize=8)
    for ax in axes[1]:
        ax.set_xlabel(f"window ({report['minute_s']:g} s each)")
    fig.suptitle(f"soak: {report['rate']:.0f} requests/s ({report['share']:.0%} of the measured peak), "
                 f"{sum(m['requests']['sent'] for m in minutes):,} requests, "
                 f"{sum(m['requests']['valid_errors'] for m in minutes)} errors")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def summary(report: dict) -> str:
    minutes, base = report["minutes"], report["minutes"][report["baseline_minute"] - 1]
    total = {key: sum(m["requests"][key] for m in minutes) for key in
             ("sent", "valid", "bad", "valid_errors", "bad_not_4xx", "skipped")}
    lines = [f"peak of the mix: {report['peak_per_s']:.0f} requests/s ({report['peak_users']} clients back to back,"
             f" {report['peak_s']:g} s); the soak: {report['rate']:.0f} requests/s ({report['share']:.0%}) for"
             f" {len(minutes)} windows of {report['minute_s']:g} s",
             f"requests: {total['sent']:,} ({total['valid']:,} valid, {total['bad']:,} bad);"
             f" errors on valid requests {total['valid_errors']}, bad requests not answered 4xx {total['bad_not_4xx']},"
             f" skipped (client behind) {total['skipped']}",
             f"{'window':>6} {'requests':>9} {'p50 ms':>7} {'p99 ms':>7} {'errors':>7} {'queue ms':>9} {'batch':>6}  processes"]
    step = max(1, len(minutes) // 12)
    for m in minutes:
        if m["minute"] % step and m is not minutes[-1] and m is not base:
            continue
        r, s = m["requests"], m["server"]
        procs = "; ".join(f"{p['role']} {p['rss_mb']:.0f} MB, {p['fds']} fds, {p['threads']} threads"
                          for p in m["processes"].values())
        lines.append(f"{m['minute']:>6} {r['sent']:>9,} {r['p50_ms']:>7} {r['p99_ms']:>7} {r['valid_errors']:>7}"
                     f" {s['queue_ms'] if s['queue_ms'] is not None else '-':>9}"
                     f" {s['batch_images'] if s['batch_images'] is not None else '-':>6}  {procs}")
    span = min(SPAN, report["baseline_minute"])
    lines.append(f"from window {report['baseline_minute']} to the end (each the median of {span} windows' highs): "
                 + ("; ".join(report["grew"]) if report["grew"] else
                    f"no process's memory, descriptors or threads grew by more than {report['growth']:.0%}"))
    examples = [e for m in minutes for e in m["requests"]["examples"]][:5]
    return "\n".join(lines + [f"  e.g. {e}" for e in examples])


async def soak(url: str, pid: int, requests: list[Request], args: argparse.Namespace) -> dict:
    import aiohttp

    connector = aiohttp.TCPConnector(limit=MAX_IN_FLIGHT)
    async with aiohttp.ClientSession(connector=connector) as session:
        requests = await first_answers(session, url, requests)
        order = schedule(requests)
        await closed_loop(session, url, order, args.peak_users, min(5.0, args.peak_seconds))  # warm-up
        peak = await closed_loop(session, url, order, args.peak_users, args.peak_seconds)
        if peak.valid_errors or peak.bad_not_4xx:
            raise RuntimeError(f"errors while finding the peak: {peak.examples}")
        peak_per_s = peak.sent / args.peak_seconds
        rate = args.rate or args.share * peak_per_s
        print(f"soak: peak {peak_per_s:.0f} requests/s; {rate:.0f} requests/s for {args.minutes} windows of"
              f" {args.minute_seconds:g} s", flush=True)
        minutes = await open_loop(session, url, pid, order, rate, args.minutes, args.minute_seconds)
    return {"peak_per_s": round(peak_per_s, 1), "peak_users": args.peak_users, "peak_s": args.peak_seconds,
            "rate": round(rate, 1), "share": rate / peak_per_s, "minute_s": args.minute_seconds, "mix": MIX,
            "baseline_minute": args.baseline_minute, "growth": args.growth, "minutes": minutes}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m loadtest.soak", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--minutes", type=int, default=60, help="how many windows the soak lasts")
    p.add_argument("--minute-seconds", type=float, default=60, help="the length of a window (shorter for a test)")
    p.add_argument("--share", type=float, default=0.7, help="the rate, as a share of the measured peak")
    p.add_argument("--rate", type=float, default=0, help="requests/s instead of --share of the peak (0: the share)")
    p.add_argument("--peak-seconds", type=float, default=30, help="how long the peak is measured")
    p.add_argument("--peak-users", type=int, default=32, help="clients sending back to back while the peak is measured")
    p.add_argument("--baseline-minute", type=int, default=5, help="the window whose end the end is compared with")
    p.add_argument("--growth", type=float, default=0.05, help="the growth allowed from there to the end (a fraction)")
    p.add_argument("--model", type=model_file, default="models/capsnet-mnist.onnx", help=MODEL_HELP)
    p.add_argument("--data", type=Path, default=DEFAULT_ROOT, help="MNIST root folder")
    p.add_argument("--out", type=Path, default=Path("runs/soak"), help="service log, soak.json and soak.png")
    p.add_argument("--report", type=Path, help="a soak.json written before: its summary and verdict by today's rules, "
                                               "and its plot beside it; no service is started")
    args = p.parse_args(argv)
    if args.report:
        report = json.loads(args.report.read_text())
        return verdict(report, args.report.with_suffix(".png"))
    if not 1 <= args.baseline_minute < args.minutes:
        p.error("--baseline-minute must be at least 1 and below --minutes")
    args.out.mkdir(parents=True, exist_ok=True)
    images = read_split("test", args.data, 8 * PREPARED)[0][:, None]
    requests = prepared(images)
    with running_service(env={"CAPSNET_MODEL": str(args.model.resolve())}, log=args.out / "service.log") as service:
        report = asyncio.run(soak(service.url, service.pid, requests, args))
    code = verdict(report, args.out / "soak.png")
    (args.out / "soak.json").write_text(json.dumps(report, indent=1) + "\n")
    print(f"report: {args.out / 'soak.json'}, plot: {args.out / 'soak.png'}")
    return code


def verdict(report: dict, plot_path: Path) -> int:
    """A soak's summary printed and its plot drawn; 1 on an error or growth, else 0."""
    report["grew"] = growth(report["minutes"], report["baseline_minute"], report["growth"])
    plot(report, plot_path)
    print(summary(report))
    errors = sum(m["requests"]["valid_errors"] + m["requests"]["bad_not_4xx"] for m in report["minutes"])
    return 1 if errors or report["grew"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
