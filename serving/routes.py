"""Every route's steps, top to bottom: parse the body, check it, run it through the batcher, answer; and the
one mapping from errors to HTTP statuses.

One `Routes` per worker, built by the service (serving/service.py) with the worker's runtime, batcher and
settings. Two kinds of callers use it:

- the fast path (serving/fastpath.py), which hands it the raw body of POST /classify and POST
  /classify_image before BentoML's API layer parses anything (`classify_body`, `classify_upload`): for a
  one-digit request the framework's parsing cost more than the model (BENCHMARKS.md);
- the `@bentoml.api` methods, for the routes the fast path leaves to BentoML (/reconstruct, /explain,
  /metadata, and /classify bodies `classify_body` declines: malformed JSON, other keys), whose parser
  then says what is wrong.

CPU-bound work (decoding an upload, /explain's run) goes to a thread, never on the event loop.
"""

from __future__ import annotations

from typing import Any, Callable

import anyio
import numpy as np
import orjson
from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.responses import JSONResponse

from serving.batching import Batcher, Overloaded
from serving.inputs import MAX_BATCH, MAX_EXPLAIN, InvalidInput, TooLarge, parse_octets, validate_images
from serving.limits import media_type
from serving.preprocess import preprocess
from serving.runtime import CapsNetRuntime, Explanation, Prediction
from serving.settings import Settings
from serving.v2 import OpenInference

RAW = "application/octet-stream"
JSON_TYPES = ("application/json", "")  # BentoML reads a body without a Content-Type as JSON too
UPLOAD_FIELD = "image"  # /classify_image's one file field
DIGITS = 5  # decimals of /reconstruct's and /explain's arrays


def error_response(err: Exception) -> JSONResponse:
    """InvalidInput -> 400, TooLarge -> 413, Overloaded -> 503; the body says why."""
    status = 503 if isinstance(err, Overloaded) else 413 if isinstance(err, TooLarge) else 400
    return JSONResponse({"error": str(err)}, status_code=status)


def answer(body: dict[str, Any]) -> JSONResponse:
    """The JSON answer as a response, which BentoML passes on as it is (for a plain dict it derives the output's
    JSON schema again on every request: 10% of a one-digit request's Python time, measured with py-spy)."""
    return JSONResponse(body)


def json_images(body: bytes) -> Any | None:
    """The "images" of a JSON body that is an object with that one key; None for any other body, which BentoML's
    API answers (its parser says what is wrong; orjson also refuses NaN literals, which BentoML reads and
    validate_images then refuses with its reason)."""
    try:
        data = orjson.loads(body)  # about 4x faster than json.loads on a digit (BENCHMARKS.md)
    except orjson.JSONDecodeError:
        return None
    return data["images"] if isinstance(data, dict) and data.keys() == {"images"} else None


async def upload_bytes(request: Request) -> bytes:
    """The bytes of a multipart upload with exactly one file field `image`, parsed once; else InvalidInput."""
    if media_type(request.headers.get("content-type", "")) != "multipart/form-data":
        raise InvalidInput(f"send the image as multipart/form-data with the file in field '{UPLOAD_FIELD}'")
    try:
        form = await request.form(max_files=1, max_fields=4)
    except Exception as err:  # noqa: BLE001 - any parse failure is the client's malformed form
        raise InvalidInput(f"malformed multipart body: {getattr(err, 'detail', err)}") from None
    try:
        keys = list(form.keys())
        upload = form.get(UPLOAD_FIELD)
        if keys != [UPLOAD_FIELD] or not isinstance(upload, UploadFile):
            raise InvalidInput(f"expected one file field '{UPLOAD_FIELD}', got fields {keys}")
        return await upload.read()
    finally:
        await form.close()


def classify_answer(p: Prediction) -> dict[str, list]:
    return {"labels": p.labels.tolist(), "lengths": p.lengths.tolist()}


def explain_answer(e: Explanation) -> dict[str, list]:
    return {"labels": e.labels.tolist(), "lengths": e.lengths.round(DIGITS).tolist(),
            "poses": e.poses.round(DIGITS).tolist(), "routing_maps": e.routing_maps.round(DIGITS).tolist(),
            "routing_types": e.routing_types.round(DIGITS).tolist(),
            "reconstructions": e.reconstructions.round(DIGITS).tolist()}


class Routes:
    def __init__(self, runtime: CapsNetRuntime, batcher: Batcher, settings: Settings,
                 ready: Callable[[], bool] = lambda: True) -> None:
        self.runtime = runtime
        self.batcher = batcher
        self.settings = settings
        self.size = runtime.image_size  # every image is the served graph's size: 28 for MNIST, 40 or 36 on bigger canvases
        self.v2 = OpenInference(runtime, batcher, settings, ready)  # the Open Inference Protocol (serving/v2.py)

    async def classify_body(self, body: bytes, content_type: str) -> JSONResponse | None:
        """POST /classify as it arrives: raw float32 (application/octet-stream) or JSON {"images": ...} ->
        {"labels": [N], "lengths": [N x 10]}, or its 400, 413 or 503. None for a body BentoML's API should answer."""
        kind = media_type(content_type)
        try:
            if kind == RAW:
                images = parse_octets(body, size=self.size)
            elif kind in JSON_TYPES and (found := json_images(body)) is not None:
                images = validate_images(found, size=self.size)
            else:
                return None
            return answer(classify_answer(await self.batcher.predict_async(images)))
        except (InvalidInput, Overloaded) as err:
            return error_response(err)

    async def classify(self, images: Any) -> JSONResponse:
        """/classify for images BentoML's API parsed."""
        try:
            return answer(classify_answer(await self.batcher.predict_async(validate_images(images, size=self.size))))
        except (InvalidInput, Overloaded) as err:
            return error_response(err)

    async def classify_upload(self, request: Request) -> JSONResponse:
        """POST /classify_image as it arrives: the form parsed once, the image decoded in a thread."""
        try:
            return await self.classify_image(await upload_bytes(request))
        except InvalidInput as err:
            return error_response(err)

    async def classify_image(self, data: bytes) -> JSONResponse:
        """An uploaded image's bytes -> {"label": int, "lengths": [10]}."""
        try:
            image = await anyio.to_thread.run_sync(preprocess, data, self.size)  # up to 16 M pixels: not on the event loop
            p = await self.batcher.predict_async(image[None])
        except (InvalidInput, Overloaded) as err:
            return error_response(err)
        return answer({"label": int(p.labels[0]), "lengths": p.lengths[0].tolist()})

    async def reconstruct(self, images: Any) -> JSONResponse:
        """/classify's images -> {"labels": [N], "reconstructions": [N x S x S]}."""
        try:
            p = await self.batcher.predict_async(validate_images(images, size=self.size))
        except (InvalidInput, Overloaded) as err:
            return error_response(err)
        return answer({"labels": p.labels.tolist(), "reconstructions": p.reconstructions.round(DIGITS).tolist()})

    async def explain(self, images: Any) -> JSONResponse:
        """At most 16 images -> the labels and lengths, the winner's pose, its routing and the reconstructions.
        Runs the model itself, in a thread, outside the batcher: it fetches outputs /classify skips."""
        try:
            checked = validate_images(images, MAX_EXPLAIN, self.size)
        except InvalidInput as err:
            return error_response(err)
        return answer(explain_answer(await anyio.to_thread.run_sync(self.runtime.explain, checked)))

    def metadata(self) -> dict[str, Any]:
        """What is served and how: the runtime's description and the worker's settings."""
        return {**self.runtime.describe(), "max_batch": MAX_BATCH, "max_explain": MAX_EXPLAIN,
                "workers": self.settings.workers, "batcher": self.settings.batcher}

    async def page_predict(self, request: Request) -> JSONResponse:
        """POST /ui/predict: one upload -> the page's view of it: label, lengths, the input the model saw,
        its reconstruction, the winner's pose and routing map."""
        def run(data: bytes) -> tuple[np.ndarray, Explanation]:
            batch = preprocess(data, self.size)[None]
            return batch, self.runtime.explain(batch)

        try:
            batch, e = await anyio.to_thread.run_sync(run, await upload_bytes(request))
        except InvalidInput as err:
            return error_response(err)
        return JSONResponse({"label": int(e.labels[0]), "lengths": e.lengths[0].round(4).tolist(),
                             "input": batch[0, 0].round(3).tolist(), "reconstruction": e.reconstructions[0].round(3).tolist(),
                             "pose": e.poses[0].tolist(), "routing_map": e.routing_maps[0].round(4).tolist()})


class Bound:
    """Where a worker's service puts its Routes once it has built them, for the ASGI parts that BentoML builds
    before the service instance (the fast path, the page). One worker process serves one service instance."""

    def __init__(self) -> None:
        self._routes: Routes | None = None

    def bind(self, routes: Routes) -> None:
        self._routes = routes

    @property
    def routes(self) -> Routes:
        if self._routes is None:
            raise RuntimeError("the service has not built its routes yet")
        return self._routes
