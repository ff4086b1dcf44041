"""Every CAPSNET_* setting of the service, read once from the environment into one frozen object.

    CAPSNET_MODEL       the fp32 ONNX file, or the folder `python -m export` wrote it in (default
                        models/capsnet-mnist.onnx, the published one; a relative path is taken from the folder
                        that holds serving/: the repository, or a Bento's src/)
    CAPSNET_DEVICE      auto | cpu | cuda (default auto: CUDA when it starts, else the CPU; cuda never falls back)
    CAPSNET_VARIANT     auto | fp32 | int8 | fp16 (default auto: int8 on the CPU, fp16 on CUDA, when current)
    CAPSNET_WORKERS     worker processes (default one per two usable cores, at least 1)
    CAPSNET_THREADS     ONNX Runtime intra-op threads per worker, 0 = ORT's choice (default the usable cores
                        divided among the workers; 0 with one worker)
    CAPSNET_BATCHER     ours | bentoml (default ours: serving/batching.py's MicroBatcher)
    CAPSNET_ACCESS_LOG  1 turns BentoML's access log on (default off)
    CAPSNET_TRACING     1 keeps BentoML's tracing middleware on every route (default off)
    CAPSNET_METRICS     0 turns the Prometheus metrics and GET /metrics off (default on)
    CAPSNET_DRAIN_SECONDS   after SIGTERM, how long a worker keeps answering (not ready, Connection: close)
                        before it stops taking connections (default 5; serving/lifecycle.py)
    CAPSNET_DRAIN_TIMEOUT   then, how long the requests still running may take before the worker exits anyway
                        (default 10)
    CAPSNET_READ_TIMEOUT    seconds a request may take to arrive whole (header and body), counted from the
                        connection's start or its previous answer; then it is closed (default 10;
                        serving/connections.py)
    CAPSNET_MAX_CONNECTIONS open connections per worker; one over it is closed at once (default 1000)
    CAPSNET_GRPC_PORT   the Open Inference Protocol over gRPC on this port, in every worker (default 8001, as Triton
                        and KServe; 0 turns it off; serving/v2_grpc.py)
    CAPSNET_GRPC_HOST   the address it listens on (default 127.0.0.1; the images set 0.0.0.0)
    CAPSNET_API_TOKEN   a bearer token every route but health then needs, HTTP and gRPC (default none: open;
                        serving/access.py); CAPSNET_API_TOKEN_FILE: read it from this file (a mounted Secret)
    CAPSNET_CORS_ORIGINS    the browser origins that may call the service, comma-separated, or * (default none)

A value that cannot be read raises SettingsError, whose message names the variable and what it takes;
the service turns it into `capsnet: cannot start: ...` and exit code 1.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

PROJECT = Path(__file__).resolve().parent.parent  # the folder that holds serving/: the repo, or a Bento's src/
DEFAULT_MODEL = Path("models/capsnet-mnist.onnx")  # the published, verified file
DEVICES = ("auto", "cpu", "cuda")
VARIANTS = ("fp32", "int8", "fp16")
BATCHERS = ("ours", "bentoml")
ON, OFF = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


class SettingsError(ValueError):
    """A CAPSNET_* value the service cannot use; the message says which and why."""


def usable_cores() -> int:
    """The cores this process may run on (taskset and cgroup cpusets included)."""
    return len(os.sched_getaffinity(0))


VARIANT_SUFFIXES = ("-int8", "-fp16", "-decoder")  # the files beside the fp32 one that `python -m export` writes


def model_path(raw: str) -> Path:
    """A CAPSNET_MODEL value as a path: the fp32 ONNX file, or the folder `python -m export` wrote it in (the one
    .onnx file there that is not a variant or the decoder). A relative path is taken from PROJECT, since `bentoml
    serve` runs the start-up check in the caller's folder but the workers in the Bento's src/, and both must open
    one file."""
    path = PROJECT / (raw or DEFAULT_MODEL)
    if not path.is_dir():
        return path
    found = sorted(p for p in path.glob("*.onnx") if not p.stem.endswith(VARIANT_SUFFIXES))
    if len(found) != 1:
        raise SettingsError(f"CAPSNET_MODEL={raw!r}: a folder must hold one fp32 .onnx file (besides its -int8, -fp16"
                            f" and -decoder files); found {[p.name for p in found] or 'none'}")
    return found[0]


def check_device(device: str) -> str:
    if device not in DEVICES:
        raise SettingsError(f"CAPSNET_DEVICE={device!r}: expected one of {', '.join(DEVICES)}")
    return device


def check_variant(variant: str) -> str:
    if variant not in ("auto", *VARIANTS):
        raise SettingsError(f"CAPSNET_VARIANT={variant!r}: expected auto or one of {', '.join(VARIANTS)}")
    return variant


@dataclass(frozen=True)
class Settings:
    model: Path = PROJECT / DEFAULT_MODEL
    device: str = "auto"
    variant: str = "auto"
    workers: int = 1
    threads: int = 0
    batcher: str = "ours"
    access_log: bool = False
    tracing: bool = False
    metrics: bool = True
    drain_seconds: float = 5.0
    drain_timeout: float = 10.0
    read_timeout: float = 10.0
    max_connections: int = 1000
    grpc_port: int = 8001
    grpc_host: str = "127.0.0.1"
    api_token: str = field(default="", repr=False)  # never in a log or an answer
    cors_origins: tuple[str, ...] = ()

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> Settings:
        """The settings the environment gives (unset or blank: the default); SettingsError on a bad value."""
        def raw(name: str) -> str:
            return environ.get(f"CAPSNET_{name}", "").strip()

        workers = whole("CAPSNET_WORKERS", raw("WORKERS"), 1) if raw("WORKERS") else max(1, usable_cores() // 2)
        if raw("THREADS"):
            threads = whole("CAPSNET_THREADS", raw("THREADS"), 0)
        else:  # the cores divided among the workers, so that they do not oversubscribe them
            threads = 0 if workers == 1 else max(1, usable_cores() // workers)
        batcher = raw("BATCHER") or "ours"
        if batcher not in BATCHERS:
            raise SettingsError(f"CAPSNET_BATCHER must be one of {', '.join(BATCHERS)}; got {batcher!r}")
        return cls(model=model_path(raw("MODEL")), device=check_device(raw("DEVICE") or "auto"),
                   variant=check_variant(raw("VARIANT") or "auto"), workers=workers, threads=threads,
                   batcher=batcher, access_log=flag("CAPSNET_ACCESS_LOG", raw("ACCESS_LOG"), False),
                   tracing=flag("CAPSNET_TRACING", raw("TRACING"), False),
                   metrics=flag("CAPSNET_METRICS", raw("METRICS"), True),
                   drain_seconds=seconds("CAPSNET_DRAIN_SECONDS", raw("DRAIN_SECONDS"), cls.drain_seconds),
                   drain_timeout=seconds("CAPSNET_DRAIN_TIMEOUT", raw("DRAIN_TIMEOUT"), cls.drain_timeout),
                   read_timeout=seconds("CAPSNET_READ_TIMEOUT", raw("READ_TIMEOUT"), cls.read_timeout, least=0.1),
                   max_connections=(whole("CAPSNET_MAX_CONNECTIONS", raw("MAX_CONNECTIONS"), 1)
                                    if raw("MAX_CONNECTIONS") else cls.max_connections),
                   grpc_port=port("CAPSNET_GRPC_PORT", raw("GRPC_PORT")) if raw("GRPC_PORT") else cls.grpc_port,
                   grpc_host=raw("GRPC_HOST") or cls.grpc_host,
                   api_token=api_token(raw("API_TOKEN"), raw("API_TOKEN_FILE")),
                   cors_origins=tuple(o.strip() for o in raw("CORS_ORIGINS").split(",") if o.strip()))


def whole(name: str, raw: str, least: int) -> int:
    """A whole number of at least `least`; else SettingsError."""
    if not raw.isdigit() or int(raw) < least:
        raise SettingsError(f"{name}={raw!r}: expected a whole number of {least} or more")
    return int(raw)


def api_token(value: str, file: str) -> str:
    """The bearer token, given or read from a file (its first line; a Secret mounted as a file often ends in a
    newline); '' for none. SettingsError when both are set, the file cannot be read, or the token is empty."""
    if value and file:
        raise SettingsError("CAPSNET_API_TOKEN and CAPSNET_API_TOKEN_FILE are both set: set one")
    if file:
        try:
            value = Path(file).read_text().strip()
        except OSError as err:
            raise SettingsError(f"CAPSNET_API_TOKEN_FILE={file!r}: cannot read it ({err.strerror})") from None
        if not value:
            raise SettingsError(f"CAPSNET_API_TOKEN_FILE={file!r}: the file is empty")
    if any(c.isspace() for c in value) or not value.isprintable():
        raise SettingsError("CAPSNET_API_TOKEN: a token is one word of printable characters")
    return value


def port(name: str, raw: str) -> int:
    """A TCP port, 0 for none; else SettingsError."""
    if not raw.isdigit() or int(raw) > 65535:
        raise SettingsError(f"{name}={raw!r}: expected a port number, 1 to 65535 (0: off)")
    return int(raw)


def seconds(name: str, raw: str, default: float, least: float = 0.0) -> float:
    """A number of seconds of at least `least` (unset: default); else SettingsError."""
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = float("nan")
    if not value >= least or value == float("inf"):
        raise SettingsError(f"{name}={raw!r}: expected a number of seconds, {least:g} or more")
    return value


def flag(name: str, raw: str, default: bool) -> bool:
    """An on/off setting: 1, true, yes or on; 0, false, no or off (any case); unset: default."""
    if not raw:
        return default
    if raw.lower() not in ON + OFF:
        raise SettingsError(f"{name}={raw!r}: expected 1 or 0 (or true/false, yes/no, on/off)")
    return raw.lower() in ON
