"""BentoML service over serving/runtime.py: `bentoml serve serving.service:CapsNet`.

Each worker process (CAPSNET_WORKERS, serving/runtime.py) holds an ONNX Runtime session, created
once, and a MicroBatcher that merges concurrent requests into one run (serving/batching.py). The APIs are sync `def`s: BentoML runs
them in its thread pool while the batcher's thread runs the model.
"""

from __future__ import annotations

import os
import sys
import typing as t
from pathlib import Path

import bentoml
from pydantic import WithJsonSchema
from starlette.responses import JSONResponse

from serving import ui
from serving.batching import MAX_CONCURRENCY, MicroBatcher, Overloaded
from serving.limits import RequestGate, error_response
from serving.openapi import OpenAPIFix
from serving.preprocess import preprocess
from serving.runtime import (MAX_EXPLAIN, CapsNetRuntime, DeviceError, InvalidInput, ModelError, Prediction,
                             validate_images, workers_from_env)


def access_log_from_env() -> bool:
    """CAPSNET_ACCESS_LOG=1 turns BentoML's access log on: a log line per request, 7% of the service's Python time
    for a one-digit JSON request and 16% for a raw one, measured (BENCHMARKS.md); off by default."""
    return os.environ.get("CAPSNET_ACCESS_LOG", "").strip() in ("1", "true", "yes")


def answer(body: dict) -> JSONResponse:
    """The JSON answer as a response, so that BentoML passes it on as it is: for a plain dict it derives the
    output's JSON schema again on every request to pick the media type (10% of a one-digit JSON request's
    Python time, measured with py-spy)."""
    return JSONResponse(body)


STARTUP_ERRORS = (DeviceError, ModelError, FileNotFoundError, ValueError)
# The images, typed for BentoML's clients (a tensor: `client.classify(images=np_array)` sends it as JSON)
# while our own checks in validate_images keep their error messages; /docs.json says the exact shape
# and range (serving/openapi.py).
Images = t.Annotated[t.Any, WithJsonSchema({"type": "tensor", "format": "json", "dtype": "float32"})]


@bentoml.service(name="capsnet", workers=workers_from_env(),
                  traffic={"timeout": 30, "max_concurrency": MAX_CONCURRENCY},
                  logging={"access": {"enabled": access_log_from_env()}})
@bentoml.asgi_app(ui.app, path="/ui")
class CapsNet:
    @bentoml.on_deployment
    def check_model_and_device() -> None:
        """Runs once in the `bentoml serve` process before any worker starts: a model or device that
        cannot work stops the service here, with its message and exit code 1, instead of a worker
        that fails, is restarted by BentoML and fails again."""
        try:
            CapsNetRuntime()
        except STARTUP_ERRORS as err:
            print(f"capsnet: cannot start: {err}", file=sys.stderr)
            raise SystemExit(1) from None

    def __init__(self) -> None:
        self.runtime = CapsNetRuntime()
        self.batcher = MicroBatcher(self.runtime, self.runtime.merge_cap)

    def _predict(self, images: Images) -> Prediction:
        return self.batcher.predict(validate_images(images))

    @bentoml.api
    def classify(self, images: Images) -> dict:
        """{"images": N x 28 x 28 numbers in [0, 1]} -> {"labels": [N], "lengths": [N x 10]}

        The same route also takes the images as raw float32 (Content-Type: application/octet-stream),
        answered by serving/octets.py before this JSON API is reached."""
        try:
            p = self._predict(images)
        except (InvalidInput, Overloaded) as err:
            return error_response(err)
        return answer(p.classify_answer())

    @bentoml.api
    def classify_image(self, image: Path) -> dict:
        """multipart field `image` (PNG, JPEG, BMP, GIF, WebP) -> {"label": int, "lengths": [10]}"""
        try:
            p = self.batcher.predict(preprocess(image.read_bytes())[None])
        except (InvalidInput, Overloaded) as err:
            return error_response(err)
        return answer({"label": int(p.labels[0]), "lengths": p.lengths[0].tolist()})

    @bentoml.api
    def reconstruct(self, images: Images) -> dict:
        """Same body as /classify -> {"labels": [N], "reconstructions": [N x 28 x 28]}"""
        try:
            p = self._predict(images)
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


CapsNet.add_asgi_middleware(RequestGate)  # size limit, upload form check, octet-stream /classify
CapsNet.add_asgi_middleware(OpenAPIFix)  # /docs.json: valid OpenAPI 3, exact about inputs and answers
