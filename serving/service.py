"""BentoML service over serving/runtime.py: `bentoml serve serving.service:CapsNet`.

Two services: `CapsNet` speaks the HTTP contract (validation, JSON shapes); `Engine` holds the one
ONNX Runtime session and exposes batchable methods, so that BentoML's adaptive batching merges
concurrent requests into one ORT run.
"""

from __future__ import annotations

import typing as t
from pathlib import Path

import bentoml
import numpy as np
from starlette.responses import JSONResponse

from serving.preprocess import preprocess
from serving import ui
from serving.limits import RequestGate
from serving.runtime import IMAGE_SIZE, MAX_BATCH, CapsNetRuntime, InvalidInput, TooLarge, validate_images

BATCH_LATENCY_MS = 1000  # a request that cannot be served within this is answered 503, not queued


@bentoml.service(name="capsnet-engine", workers=1, traffic={"timeout": 30, "max_concurrency": 256})
class Engine:
    def __init__(self) -> None:
        self.runtime = CapsNetRuntime()

    @bentoml.api(batchable=True, max_batch_size=MAX_BATCH, max_latency_ms=BATCH_LATENCY_MS)
    def lengths(self, images: np.ndarray) -> np.ndarray:
        return self.runtime.predict(images).lengths

    @bentoml.api(batchable=True, max_batch_size=MAX_BATCH, max_latency_ms=BATCH_LATENCY_MS)
    def lengths_and_reconstructions(self, images: np.ndarray) -> np.ndarray:
        """(N, 10 + 784): one ORT run for /reconstruct."""
        p = self.runtime.predict(images)
        return np.concatenate([p.lengths, p.reconstructions.reshape(len(images), -1)], axis=1)

    @bentoml.api
    def describe(self) -> dict:
        return self.runtime.describe()


def bad_request(err: InvalidInput) -> JSONResponse:
    return JSONResponse({"error": str(err)}, status_code=413 if isinstance(err, TooLarge) else 400)


@bentoml.service(name="capsnet", traffic={"timeout": 30, "max_concurrency": 128})
@bentoml.asgi_app(ui.app, path="/ui")
class CapsNet:
    engine = bentoml.depends(Engine)

    @bentoml.api
    def classify(self, images: t.Any) -> dict:
        """{"images": N x 28 x 28 numbers in [0, 1]} -> {"labels": [N], "lengths": [N x 10]}"""
        try:
            batch = validate_images(images)
        except InvalidInput as err:
            return bad_request(err)
        lengths = self.engine.lengths(batch)
        return {"labels": np.argmax(lengths, 1).tolist(), "lengths": lengths.tolist()}

    @bentoml.api
    def classify_image(self, image: Path) -> dict:
        """multipart field `image` (PNG, JPEG, BMP, GIF, WebP) -> {"label": int, "lengths": [10]}"""
        try:
            batch = preprocess(image.read_bytes())[None]
        except InvalidInput as err:
            return bad_request(err)
        lengths = self.engine.lengths(batch)[0]
        return {"label": int(np.argmax(lengths)), "lengths": lengths.tolist()}

    @bentoml.api
    def reconstruct(self, images: t.Any) -> dict:
        """Same body as /classify -> {"labels": [N], "reconstructions": [N x 28 x 28]}"""
        try:
            batch = validate_images(images)
        except InvalidInput as err:
            return bad_request(err)
        both = self.engine.lengths_and_reconstructions(batch)
        n_classes = both.shape[1] - IMAGE_SIZE * IMAGE_SIZE
        return {"labels": np.argmax(both[:, :n_classes], 1).tolist(),
                "reconstructions": both[:, n_classes:].reshape(-1, IMAGE_SIZE, IMAGE_SIZE).round(5).tolist()}

    @bentoml.api
    def metadata(self) -> dict:
        """Model name, sha256, test accuracy, opset, routing iterations, execution providers in use."""
        return self.engine.describe()


CapsNet.add_asgi_middleware(RequestGate)  # size limit, upload form check
