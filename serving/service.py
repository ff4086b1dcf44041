"""BentoML service over serving/runtime.py: `bentoml serve serving.service:CapsNet`.

Each worker process (CAPSNET_WORKERS, serving/runtime.py) holds an ONNX Runtime session, created
once, and a MicroBatcher that merges concurrent requests into one run (serving/batching.py). The APIs
that use the batcher are `async def`s that await it on the event loop (a sync API would run in
BentoML's thread pool, one call at a time by default, and nothing would merge); /explain, which runs
the model itself, is a sync `def` in that pool. Most /classify bodies are answered before these APIs
are reached (serving/direct.py).
"""

from __future__ import annotations

import os
import sys
import typing as t
from pathlib import Path

import bentoml
from pydantic import WithJsonSchema

from serving import ui
from serving.answers import answer, error_response
from serving.batching import MAX_CONCURRENCY, Overloaded, batcher_from_env, batcher_kind_from_env
from serving.limits import RequestGate
from serving.openapi import OpenAPIFix
from serving.preprocess import preprocess
from serving.runtime import (MAX_EXPLAIN, CapsNetRuntime, DeviceError, InvalidInput, ModelError, Prediction,
                             validate_images, workers_from_env)


def flag_from_env(name: str, default: bool) -> bool:
    """An on/off setting: 1, true, yes or on turn it on; 0, false, no or off turn it off; unset: default."""
    raw = os.environ.get(name, "").strip().lower()
    return default if not raw else raw in ("1", "true", "yes", "on")


def access_log_from_env() -> bool:
    """CAPSNET_ACCESS_LOG=1 turns BentoML's access log on: a log line per request, 7% of the service's Python time
    for a one-digit JSON request and 16% for a raw one, measured (BENCHMARKS.md); off by default."""
    return flag_from_env("CAPSNET_ACCESS_LOG", False)


def tracing_from_env() -> dict:
    """BentoML's tracing config. Its default samples no traces (sample rate 0) yet its OpenTelemetry middleware still
    wraps every request; unless CAPSNET_TRACING=1 (for a deployment that configures an exporter) every URL is
    excluded from it, which skips that work."""
    return {} if flag_from_env("CAPSNET_TRACING", False) else {"excluded_urls": [".*"]}


def metrics_from_env() -> bool:
    """CAPSNET_METRICS=0 turns BentoML's Prometheus metrics (GET /metrics) off; on by default."""
    return flag_from_env("CAPSNET_METRICS", True)


STARTUP_ERRORS = (DeviceError, ModelError, FileNotFoundError, ValueError)
# The images, typed for BentoML's clients (a tensor: `client.classify(images=np_array)` sends it as JSON)
# while our own checks in validate_images keep their error messages; /docs.json says the exact shape
# and range (serving/openapi.py).
Images = t.Annotated[t.Any, WithJsonSchema({"type": "tensor", "format": "json", "dtype": "float32"})]


@bentoml.service(name="capsnet", workers=workers_from_env(),
                  traffic={"timeout": 30, "max_concurrency": MAX_CONCURRENCY},
                  logging={"access": {"enabled": access_log_from_env()}}, tracing=tracing_from_env(),
                  metrics={"enabled": metrics_from_env()})
@bentoml.asgi_app(ui.app, path="/ui")
class CapsNet:
    @bentoml.on_deployment
    def check_model_and_device() -> None:
        """Runs once in the `bentoml serve` process before any worker starts: a model or device that
        cannot work stops the service here, with its message and exit code 1, instead of a worker
        that fails, is restarted by BentoML and fails again."""
        try:
            batcher_kind_from_env()
            CapsNetRuntime()
        except STARTUP_ERRORS as err:
            print(f"capsnet: cannot start: {err}", file=sys.stderr)
            raise SystemExit(1) from None

    def __init__(self) -> None:
        self.runtime = CapsNetRuntime()
        self.batcher = batcher_from_env(self.runtime)

    async def _predict(self, images: Images) -> Prediction:
        return await self.batcher.predict_async(validate_images(images))

    @bentoml.api
    async def classify(self, images: Images) -> dict:
        """{"images": N x 28 x 28 numbers in [0, 1]} -> {"labels": [N], "lengths": [N x 10]}

        The same route also takes the images as raw float32 (Content-Type: application/octet-stream).
        Both forms are answered by serving/direct.py before this API is reached, except bodies it
        leaves to BentoML's parsing (malformed JSON, keys other than "images")."""
        try:
            p = await self._predict(images)
        except (InvalidInput, Overloaded) as err:
            return error_response(err)
        return answer(p.classify_answer())

    @bentoml.api
    async def classify_image(self, image: Path) -> dict:
        """multipart field `image` (PNG, JPEG, BMP, GIF, WebP) -> {"label": int, "lengths": [10]}"""
        try:
            p = await self.batcher.predict_async(preprocess(image.read_bytes())[None])
        except (InvalidInput, Overloaded) as err:
            return error_response(err)
        return answer({"label": int(p.labels[0]), "lengths": p.lengths[0].tolist()})

    @bentoml.api
    async def reconstruct(self, images: Images) -> dict:
        """Same body as /classify -> {"labels": [N], "reconstructions": [N x 28 x 28]}"""
        try:
            p = await self._predict(images)
        except (InvalidInput, Overloaded) as err:
            return error_response(err)
        return answer({"labels": p.labels.tolist(), "reconstructions": p.reconstructions.round(5).tolist()})

    @bentoml.api
    def explain(self, images: Images) -> dict:
        """Same body as /classify, at most 16 images -> {"labels", "lengths", "poses": the winning capsule's 16 numbers,
        "routing_maps": 6x6 shares of the primary capsules' votes that went to the winner, "routing_types": 32 shares,
        "reconstructions"}. Runs the model once per request outside the batcher: it asks for outputs /classify skips."""
        try:
            return answer(self.runtime.explain(validate_images(images, MAX_EXPLAIN)).answer())
        except InvalidInput as err:
            return error_response(err)

    @bentoml.api
    def metadata(self) -> dict:
        """Model name, sha256, test accuracy, opset, routing iterations, execution providers in use."""
        return self.runtime.describe()


CapsNet.add_asgi_middleware(RequestGate)  # size limit, upload form check, /classify's common bodies
CapsNet.add_asgi_middleware(OpenAPIFix)  # /docs.json: valid OpenAPI 3, exact about inputs and answers
