"""Every route's steps, top to bottom: read the body, check it, run it through the batcher, answer.

One `Routes` per worker, built by the service (serving/service.py) with the worker's runtime, batcher and
settings. The route table that leads here is serving/app.py's; the steps raise serving/errors.py's errors,
which one function there turns into answers. CPU-bound work (decoding an upload, /explain's run) goes to a
thread, never on the event loop.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import anyio
import numpy as np
import orjson
from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response

from serving.batching import Batcher
from serving.errors import InvalidInput, NotFound, TooLarge
from serving.limits import IMAGE_SIZE, MAX_BATCH, MAX_EXPLAIN
from serving.preprocess import preprocess
from serving.runtime import CapsNetRuntime, Explanation, Prediction
from serving.settings import Settings

RAW = "application/octet-stream"
JSON_TYPES = ("application/json", "")  # a body without a Content-Type is read as JSON, as BentoML does
UPLOAD_FIELD = "image"  # /classify_image's one file field
DIGITS = 5  # decimals of /reconstruct's and /explain's arrays
PAGE = Path(__file__).with_name("static") / "index.html"  # the page at /ui/; static/ort/ holds onnxruntime-web


def media_type(raw: str) -> str:
    """A Content-Type header's media type, without its parameters."""
    return raw.split(";")[0].strip().lower()


# What a request's images must be, checked before anything runs (S is the served graph's image size).

def validate_images(images: Any, max_batch: int = MAX_BATCH, size: int = IMAGE_SIZE) -> np.ndarray:
    """A JSON array of N SxS (or 1xSxS) images in [0, 1] -> float32 (N, 1, S, S); else InvalidInput."""
    if not isinstance(images, list):
        raise InvalidInput(f"'images' must be an array of N images of {size}x{size} numbers,"
                           f" got {type(images).__name__}")
    if not images:
        raise InvalidInput("'images' is empty: send at least one image")
    if len(images) > max_batch:
        raise TooLarge(f"'images' holds {len(images)} images; at most {max_batch} per request")
    try:
        array = np.array(images)
    except (ValueError, TypeError):
        raise InvalidInput(f"'images' is ragged: every image must be {size} rows of {size} numbers") from None
    if array.dtype.kind not in "iuf":
        raise InvalidInput("'images' must hold only numbers (no strings, booleans, nulls or objects)")
    if array.ndim == 4 and array.shape[1] == 1:
        array = array[:, 0]
    if array.shape[1:] != (size, size):
        raise InvalidInput(f"each image must be {size}x{size} (or 1x{size}x{size});"
                           f" got images of shape {list(array.shape[1:])}")
    return check_pixels(array.astype(np.float32))[:, None]


def check_pixels(array: np.ndarray) -> np.ndarray:
    """array itself when every value is finite and in [0, 1]; else InvalidInput."""
    low, high = array.min(), array.max()  # NaN propagates into both, and Infinity is past 1 or below 0
    if not (low >= 0.0 and high <= 1.0):
        if not np.isfinite(array).all():
            raise InvalidInput("'images' holds NaN or Infinity")
        raise InvalidInput(f"pixel values must lie in [0, 1]; got [{low:.4g}, {high:.4g}]")
    return array


def parse_octets(body: bytes, max_batch: int = MAX_BATCH, size: int = IMAGE_SIZE) -> np.ndarray:
    """An application/octet-stream body: N x S x S float32 little-endian in [0, 1] -> (N, 1, S, S)."""
    image_bytes = size * size * 4
    if not body or len(body) % image_bytes:
        raise InvalidInput(f"an application/octet-stream body must be N x {size} x {size} float32"
                           f" (a multiple of {image_bytes} bytes); got {len(body)} bytes")
    if len(body) // image_bytes > max_batch:
        raise TooLarge(f"the body holds {len(body) // image_bytes} images; at most {max_batch} per request")
    return check_pixels(np.frombuffer(body, dtype="<f4").reshape(-1, 1, size, size))


def classify_images(kind: str, body: bytes, size: int = IMAGE_SIZE) -> np.ndarray:
    """/classify's body, by its media type: raw float32 or JSON {"images": ...} -> checked (N, 1, S, S)."""
    if kind == RAW:
        return parse_octets(body, size=size)
    if kind in JSON_TYPES:
        return validate_images(json_images(body), size=size)
    raise InvalidInput(f"Content-Type {kind!r}: send application/json or {RAW}")


def json_images(body: bytes) -> Any:
    """The "images" of a JSON body {"images": ...} (other keys are ignored, as BentoML's APIs ignore them); else
    InvalidInput saying what the body is. NaN and Infinity literals, which orjson refuses, are read (by the
    standard library) so that the images' check can name them."""
    if not body:
        raise InvalidInput('the body is empty: send a JSON object {"images": [...]}')
    try:
        data = orjson.loads(body)  # about 4x faster than json.loads on a digit (docs/benchmarks-history.md)
    except orjson.JSONDecodeError as err:
        try:
            data = json.loads(body)
        except RecursionError:
            raise InvalidInput("the body is nested too deeply (past the parser's recursion limit)") from None
        except ValueError:
            raise InvalidInput(f"the body is not JSON: {err}") from None
    if not isinstance(data, dict) or "images" not in data:
        raise InvalidInput(f'the body should be an object {{"images": [...]}}; got {type(data).__name__}'
                           f'{" without images" if isinstance(data, dict) else ""}')
    return data["images"]


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


def answer(body: dict[str, Any]) -> JSONResponse:
    """The JSON answer as a response, which BentoML passes on as it is (for a plain dict it derives the output's
    JSON schema again on every request: 10% of a one-digit request's Python time, measured with py-spy)."""
    return JSONResponse(body)


def classify_answer(p: Prediction) -> dict[str, list]:
    return {"labels": p.labels.tolist(), "lengths": p.lengths.tolist()}


def explain_answer(e: Explanation) -> dict[str, list]:
    return {"labels": e.labels.tolist(), "lengths": e.lengths.round(DIGITS).tolist(),
            "poses": e.poses.round(DIGITS).tolist(), "routing_maps": e.routing_maps.round(DIGITS).tolist(),
            "routing_types": e.routing_types.round(DIGITS).tolist(),
            "reconstructions": e.reconstructions.round(DIGITS).tolist()}


class Routes:
    def __init__(self, runtime: CapsNetRuntime, batcher: Batcher, settings: Settings) -> None:
        self.runtime = runtime
        self.batcher = batcher
        self.settings = settings
        self.size = runtime.image_size  # every image is the served graph's size: 28 for MNIST, 40 or 36 on bigger canvases

    async def classify(self, request: Request) -> Response:
        """POST /classify: raw float32 (application/octet-stream) or JSON {"images": ...} ->
        {"labels": [N], "lengths": [N x 10]}."""
        images = classify_images(media_type(request.headers.get("content-type", "")), await request.body(), self.size)
        return answer(classify_answer(await self.batcher.predict_async(images)))

    async def classify_image(self, request: Request) -> Response:
        """POST /classify_image: one uploaded image -> {"label": int, "lengths": [10]}."""
        data = await upload_bytes(request)
        image = await anyio.to_thread.run_sync(preprocess, data, self.size)  # up to 16 M pixels: not on the event loop
        p = await self.batcher.predict_async(image[None])
        return answer({"label": int(p.labels[0]), "lengths": p.lengths[0].tolist()})

    async def reconstruct(self, images: Any) -> Response:
        """/classify's images, as BentoML's API parsed them -> {"labels": [N], "reconstructions": [N x S x S]}."""
        p = await self.batcher.predict_async(validate_images(images, size=self.size))
        return answer({"labels": p.labels.tolist(), "reconstructions": p.reconstructions.round(DIGITS).tolist()})

    async def explain(self, images: Any) -> Response:
        """At most 16 images -> the labels and lengths, the winner's pose, its routing and the reconstructions.
        Runs the model itself, in a thread, outside the batcher: it fetches outputs /classify skips."""
        checked = validate_images(images, MAX_EXPLAIN, self.size)
        return answer(explain_answer(await anyio.to_thread.run_sync(self.runtime.explain, checked)))

    def metadata(self) -> dict[str, Any]:
        """What is served and how: the runtime's description and the worker's settings."""
        return {**self.runtime.describe(), "max_batch": MAX_BATCH, "max_explain": MAX_EXPLAIN,
                "workers": self.settings.workers, "batcher": self.settings.batcher}

    # The page (GET /ui/) and what it loads.

    async def page(self, request: Request) -> Response:
        return FileResponse(PAGE, media_type="text/html")

    async def page_predict(self, request: Request) -> Response:
        """POST /ui/predict: one upload -> the page's view of it: label, lengths, the input the model saw,
        its reconstruction, the winner's pose and routing map."""
        def run(data: bytes) -> tuple[np.ndarray, Explanation]:
            batch = preprocess(data, self.size)[None]
            return batch, self.runtime.explain(batch)

        batch, e = await anyio.to_thread.run_sync(run, await upload_bytes(request))
        return JSONResponse({"label": int(e.labels[0]), "lengths": e.lengths[0].round(4).tolist(),
                             "input": batch[0, 0].round(3).tolist(), "reconstruction": e.reconstructions[0].round(3).tolist(),
                             "pose": e.poses[0].tolist(), "routing_map": e.routing_maps[0].round(4).tolist()})

    async def model_file(self, request: Request) -> Response:
        """GET /ui/model.onnx: the file the service runs, for the page's in-browser mode."""
        return FileResponse(self.runtime.model_path, media_type=RAW)

    async def decoder_file(self, request: Request) -> Response:
        """GET /ui/decoder.onnx: the decoder alone, which the page's pose sliders run in the browser."""
        path = self.runtime.decoder_path
        if path is None or not path.exists():
            raise NotFound("the served model names no decoder file (`make export` writes it)")
        return FileResponse(path, media_type=RAW)
