"""Start `bentoml serve` as a real subprocess on a loopback port and wait until it is ready."""

from __future__ import annotations

import contextlib
import os
import resource
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import psutil

SERVICE = "serving.service:CapsNet"
HOST = "127.0.0.1"


def children_cpu_seconds() -> float:
    """User + system CPU time of this process's finished children (wrk, Locust) so far."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def wait_ready(url: str, timeout: float, proc: subprocess.Popen | None = None, interval: float = 0.5) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"the service exited with code {proc.returncode} before it was ready")
        try:
            with urllib.request.urlopen(url + "/readyz", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(interval)
    raise TimeoutError(f"{url}/readyz not ready after {timeout:.0f} s")


@dataclass(frozen=True)
class Service:
    url: str
    pid: int  # the `bentoml serve` process; its workers are its children


@contextlib.contextmanager
def running_service(port: int | None = None, target: str = SERVICE, env: dict[str, str] | None = None,
                    log: Path | None = None, timeout: float = 180, python: str = sys.executable
                    ) -> Iterator[Service]:
    """Yield a running `bentoml serve` process (URL and pid), run by `python`; stop its whole process group
    afterwards. If it is not ready in time, the error carries the end of its log."""
    port = port or free_port()
    out = open(log, "w+") if log else tempfile.TemporaryFile("w+")
    proc = subprocess.Popen(
        [python, "-m", "bentoml", "serve", target, "--host", HOST, "--port", str(port)],
        env={**os.environ, **(env or {})}, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
    )
    url = f"http://{HOST}:{port}"
    try:
        try:
            wait_ready(url, timeout, proc)
        except (RuntimeError, TimeoutError) as err:
            out.flush()
            out.seek(0)
            raise type(err)(f"{err}; the end of its log:\n{out.read()[-3000:]}") from None
        yield Service(url, proc.pid)
    finally:
        stop_tree(proc)
        out.close()


def stop_tree(proc: subprocess.Popen, timeout: float = 20) -> None:
    """Stop a `bentoml serve` process and its workers now, without their drain, and leave none behind.

    Its workers run in sessions of their own (BentoML's process manager starts them so), so a signal to its
    process group misses them, and a SIGKILL to it alone would leave them serving. SIGTERM goes to it and
    to each worker (a worker's second SIGTERM, after its manager's, skips the drain window); whatever is
    still there after `timeout` seconds is killed."""
    try:
        tree = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        tree = []
    for p in tree:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.send_signal(signal.SIGTERM)
    _, alive = psutil.wait_procs(tree, timeout=timeout)
    for p in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.kill()
    proc.wait()
