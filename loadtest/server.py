"""The one way the project starts a server process and stops it: `bentoml serve` for the load tests, the
experiments, the scripts and the tests, and the peers and the hand-written baseline beside it.

`started` starts any server command (optionally pinned to cores with taskset) in a session of its own, waits
until its health route answers 200 (an event, with a bound), and stops it and every process it started
afterwards; `running_service` is that for `bentoml serve`.
"""

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
from typing import IO, Iterator

import psutil

from serving.settings import SettingsError, model_path

SERVICE = "serving.service:CapsNet"
MODEL_HELP = "the fp32 ONNX file served, or the folder `python -m export` wrote it in (CAPSNET_MODEL)"
HOST = "127.0.0.1"


def model_file(raw: str) -> Path:
    """A --model value: the fp32 ONNX file, or the folder `python -m export` wrote it in (as CAPSNET_MODEL takes it),
    relative to the current folder; argparse says what is wrong with one that is neither."""
    import argparse

    try:
        return model_path(str(Path(raw).resolve()))
    except SettingsError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def children_cpu_seconds() -> float:
    """User + system CPU time of this process's finished children (wrk, Locust) so far."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


_GIVEN: set[int] = set()  # the ports free_port has handed out in this process


def free_port() -> int:
    """A loopback port no one listens on now, and not one handed out before by this process: the kernel may give
    the same free port to two calls in a row (a service's HTTP and gRPC ports were once the same, and it could not
    start)."""
    while True:
        with socket.socket() as s:
            s.bind((HOST, 0))
            port = s.getsockname()[1]
        if port not in _GIVEN:
            _GIVEN.add(port)
            return port


def wait_ready(url: str, timeout: float, proc: subprocess.Popen | None = None, interval: float = 0.05,
               path: str = "/readyz") -> None:
    """Until url + path answers 200; RuntimeError if proc exits first, TimeoutError after `timeout` seconds."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"the server exited with code {proc.returncode} before it was ready")
        try:
            with urllib.request.urlopen(url + path, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(interval)
    raise TimeoutError(f"{url}{path} not ready after {timeout:.0f} s")


def bentoml_serve(port: int, target: str = SERVICE, python: str = sys.executable) -> list[str]:
    """The command that serves `target` on HOST:port."""
    return [python, "-m", "bentoml", "serve", target, "--host", HOST, "--port", str(port)]


def start(command: list[str], env: dict[str, str] | None, out: IO, cores: set[int] | None = None,
          cwd: Path | None = None) -> subprocess.Popen:
    """command in a session of its own (its output to `out`), pinned to `cores` when given. Our service's gRPC gets
    a free port unless env names one: never the machine-wide default 8001, which another service (a replica
    beside it, a developer's `make serve`) may hold."""
    pin = ["taskset", "-c", ",".join(map(str, sorted(cores)))] if cores else []
    env = {**os.environ, "CAPSNET_GRPC_PORT": str(free_port()), **(env or {})}
    return subprocess.Popen([*pin, *command], env=env, stdout=out, stderr=subprocess.STDOUT,
                            start_new_session=True, cwd=cwd)


@contextlib.contextmanager
def started(command: list[str], port: int, env: dict[str, str] | None = None, log: Path | None = None,
            timeout: float = 180, ready: str = "/readyz", cores: set[int] | None = None, cwd: Path | None = None,
            stop_timeout: float = 20) -> Iterator[subprocess.Popen]:
    """A server process started with `start`, once HOST:port + `ready` answers 200; stopped with `stop_tree`
    afterwards. If it is not ready in time, the error carries the end of its log."""
    out = open(log, "w+") if log else tempfile.TemporaryFile("w+")
    proc = start(command, env, out, cores, cwd)
    try:
        try:
            wait_ready(f"http://{HOST}:{port}", timeout, proc, path=ready)
        except (RuntimeError, TimeoutError) as err:
            out.flush()
            out.seek(0)
            raise type(err)(f"{err}; the end of its log:\n{out.read()[-3000:]}") from None
        yield proc
    finally:
        stop_tree(proc, stop_timeout)
        out.close()


@dataclass(frozen=True)
class Service:
    url: str
    pid: int  # the `bentoml serve` process; its workers are its children
    grpc: str = ""  # host:port of its Open Inference Protocol over gRPC ("" when off)


@contextlib.contextmanager
def running_service(port: int | None = None, target: str = SERVICE, env: dict[str, str] | None = None,
                    log: Path | None = None, timeout: float = 180, python: str = sys.executable,
                    cores: set[int] | None = None) -> Iterator[Service]:
    """A running `bentoml serve` process (URL, pid, gRPC address), run by `python`, stopped with all its workers
    afterwards. Its gRPC port is a free one unless env sets CAPSNET_GRPC_PORT (never the shared default 8001,
    which another service on this machine may hold)."""
    port = port or free_port()
    env = {"CAPSNET_GRPC_PORT": str(free_port()), **(env or {})}
    grpc = f"{HOST}:{env['CAPSNET_GRPC_PORT']}" if env["CAPSNET_GRPC_PORT"] != "0" else ""
    with started(bentoml_serve(port, target, python), port, env, log, timeout, cores=cores) as proc:
        yield Service(f"http://{HOST}:{port}", proc.pid, grpc)


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
