"""BentoML service: `bentoml serve serving.service:CapsNet`. It wires the parts together and holds no logic.

The settings are read once, at import (serving/settings.py): a bad value stops `bentoml serve` with
`capsnet: cannot start: ...` and exit code 1, as a model or device that cannot work does (checked once,
before any worker starts, by `check_model_and_device`). Each worker process builds one runtime (its ONNX
Runtime session, created once), one batcher, one Routes (serving/routes.py) and one OpenInference
(serving/v2.py). The routes the project answers itself are declared in serving/app.py's table, in the one ASGI
layer in front of BentoML's app, which BentoML builds before this instance and which gets them through
`WORKER`; the `@bentoml.api` methods below are the routes BentoML parses (/reconstruct, /explain, /metadata).
"""

from __future__ import annotations

import asyncio
import sys
import typing as t

import bentoml
from pydantic import WithJsonSchema

from serving import framework
from serving.app import Bound, Front
from serving.batching import make_batcher
from serving.errors import answered
from serving.lifecycle import Drain, log
from serving.limits import MAX_CONCURRENCY
from serving.metrics import batcher_metrics
from serving.routes import Routes
from serving.runtime import CapsNetRuntime, ModelError
from serving.sessions import DeviceError
from serving.settings import Settings, SettingsError
from serving.v2 import OpenInference
from serving.v2_grpc import GrpcInference, check_port, grpc_server

STARTUP_ERRORS = (DeviceError, ModelError, FileNotFoundError, SettingsError)


def cannot_start(err: Exception) -> t.NoReturn:
    print(f"capsnet: cannot start: {err}", file=sys.stderr)
    raise SystemExit(1) from None


def settings_or_exit() -> Settings:
    try:
        return Settings.from_env()
    except SettingsError as err:
        cannot_start(err)


def open_runtime(settings: Settings) -> CapsNetRuntime:
    return CapsNetRuntime(settings.model, settings.device, settings.threads, settings.variant)


SETTINGS = settings_or_exit()
WORKER = Bound()  # this worker's routes, for the layer in front of BentoML's app (serving/app.py)
DRAIN = Drain(SETTINGS.drain_seconds, SETTINGS.drain_timeout)  # this worker's SIGTERM drain
framework.guard_connections(SETTINGS.read_timeout, SETTINGS.max_connections)  # read deadline, connection cap
framework.quick_respawn()  # in the `bentoml serve` process: a crashed worker is restarted within 0.5 s, not 10
framework.quiet_client_errors(log)  # a client's refused request: one rate-limited INFO line, no traceback
# The images, typed for BentoML's clients (a tensor: `client.classify(images=np_array)` sends it as JSON)
# while our own checks in validate_images keep their error messages; /docs.json says the exact shape
# and range (serving/openapi.py).
Images = t.Annotated[t.Any, WithJsonSchema({"type": "tensor", "format": "json", "dtype": "float32"})]
# BentoML's tracing config: its default samples no traces yet its middleware still wraps every request;
# unless CAPSNET_TRACING=1 every URL is excluded from it, which skips that work
TRACING = {} if SETTINGS.tracing else {"excluded_urls": [".*"]}


@bentoml.service(name="capsnet", workers=SETTINGS.workers,
                  traffic={"timeout": 30, "max_concurrency": MAX_CONCURRENCY},
                  logging={"access": {"enabled": SETTINGS.access_log}}, tracing=TRACING,
                  metrics={"enabled": SETTINGS.metrics})
class CapsNet:
    @bentoml.on_deployment
    def check_model_and_device() -> None:
        """Runs once in the `bentoml serve` process before any worker starts: a model or device that
        cannot work stops the service here, with its message and exit code 1, instead of a worker
        that fails, is restarted by BentoML and fails again."""
        try:
            open_runtime(SETTINGS)
            if SETTINGS.grpc_port:
                check_port(SETTINGS.grpc_host, SETTINGS.grpc_port)
        except STARTUP_ERRORS as err:
            cannot_start(err)

    def __init__(self) -> None:
        runtime = open_runtime(SETTINGS)
        batcher = make_batcher(SETTINGS.batcher, runtime, batcher_metrics() if SETTINGS.metrics else None)
        self.routes = Routes(runtime, batcher, SETTINGS)
        v2 = OpenInference(runtime, batcher, SETTINGS, ready=lambda: not DRAIN.draining)
        WORKER.bind(self.routes, v2)
        DRAIN.install()  # SIGTERM: not ready, Connection: close, then stop (serving/lifecycle.py)
        if SETTINGS.grpc_port:  # the same protocol over gRPC, in this worker's event loop (serving/v2_grpc.py)
            self.grpc = grpc_server(GrpcInference(v2, ready=lambda: not DRAIN.draining, token=SETTINGS.api_token),
                                    SETTINGS.grpc_port,
                                    SETTINGS.grpc_host, share_port=SETTINGS.workers > 1, tls=DRAIN.tls)
            asyncio.get_running_loop().create_task(self.grpc.start())
            DRAIN.on_stop.append(lambda: self.grpc.stop(SETTINGS.drain_timeout))

    def __is_ready__(self) -> bool:
        """/readyz: 503 once SIGTERM has started the drain."""
        return not DRAIN.draining

    @bentoml.api
    async def reconstruct(self, images: Images) -> dict:
        """Same JSON body as /classify -> {"labels": [N], "reconstructions": [N x 28 x 28]}"""
        return await answered(self.routes.reconstruct(images))

    @bentoml.api
    async def explain(self, images: Images) -> dict:
        """Same JSON body as /classify, at most 16 images -> {"labels", "lengths", "poses": the winning capsule's
        16 numbers, "routing_maps": 6x6 shares of the primary capsules' votes that went to the winner,
        "routing_types": 32 shares, "reconstructions"}."""
        return await answered(self.routes.explain(images))

    @bentoml.api
    def metadata(self) -> dict:
        """Model name, sha256, test accuracy, opset, routing iterations, execution providers, batcher, workers."""
        return self.routes.metadata()


CapsNet.add_asgi_middleware(Front, worker=WORKER, drain=DRAIN, token=SETTINGS.api_token,
                            cors_origins=SETTINGS.cors_origins)  # drain, body limits, our route table (serving/app.py)
