"""One fuzz target per parser of the service, each driving the function its route calls, with the arguments the
route gives it. An input may end in an answer or in one of serving/errors.py's errors (what the service turns
into a 4xx, or a 503); any other exception is a bug of ours, which the route would answer with a 500.

    TARGETS["octets"](data)   # raises only on a bug
"""

from __future__ import annotations

import asyncio
from typing import Callable

import numpy as np
from google.protobuf.message import DecodeError
from starlette.requests import Request

from serving.errors import ANSWERED, status_of
from serving.limits import IMAGE_SIZE
from serving.preprocess import preprocess
from serving.routes import JSON_TYPES, RAW, classify_images, upload_bytes
from serving.v2 import parse_infer_body
from serving.v2_grpc import parse_infer_request
from serving.v2_proto import MESSAGES

INPUT, OUTPUTS = "image", ["lengths", "reconstruction"]  # the published model's names (serving/v2.py signature)
BOUNDARY = "fuzzboundary"  # the multipart target's Content-Type boundary; its seeds use it
HEADER_DIGITS = 6  # the v2 binary target: the first bytes are Inference-Header-Content-Length's value


def answered_or_refused(run: Callable[[], object]) -> None:
    """run(), where one of the service's own errors is a refusal (fine) and anything else propagates."""
    try:
        run()
    except ANSWERED as err:
        assert status_of(err) in (400, 404, 405, 413, 503), err


def octets(data: bytes) -> None:
    """POST /classify, application/octet-stream."""
    answered_or_refused(lambda: classify_images(RAW, data, IMAGE_SIZE))


def json_images(data: bytes) -> None:
    """POST /classify, application/json (/reconstruct's and /explain's images go through the same check)."""
    answered_or_refused(lambda: classify_images(JSON_TYPES[0], data, IMAGE_SIZE))


def v2_json(data: bytes) -> None:
    """POST /v2/models/capsnet/infer with a JSON body (no Inference-Header-Content-Length)."""
    answered_or_refused(lambda: parse_infer_body(data, None, INPUT, IMAGE_SIZE, OUTPUTS))


def v2_binary(data: bytes) -> None:
    """POST /v2/models/capsnet/infer with the binary extension: the first HEADER_DIGITS bytes, as text, are the
    Inference-Header-Content-Length header (any text: the service reads whatever the client sent), the rest the
    body."""
    header_length = data[:HEADER_DIGITS].decode("latin-1")
    answered_or_refused(lambda: parse_infer_body(data[HEADER_DIGITS:], header_length, INPUT, IMAGE_SIZE, OUTPUTS))


def grpc_infer(data: bytes) -> None:
    """ModelInfer over gRPC: the message as grpcio hands it to the method (a message that does not parse is
    refused by grpcio before the service sees it)."""
    try:
        request = MESSAGES["ModelInferRequest"].FromString(data)
    except DecodeError:
        return
    answered_or_refused(lambda: parse_infer_request(request, INPUT, IMAGE_SIZE, OUTPUTS))


def multipart(data: bytes) -> None:
    """POST /classify_image's form: the body under a multipart Content-Type, parsed by Starlette as the route
    does; what comes out of it goes on to the image target's decoder."""
    async def receive() -> dict:
        return {"type": "http.request", "body": data, "more_body": False}

    scope = {"type": "http", "method": "POST", "path": "/classify_image", "query_string": b"",
             "headers": [(b"content-type", f"multipart/form-data; boundary={BOUNDARY}".encode()),
                         (b"content-length", str(len(data)).encode())]}
    answered_or_refused(lambda: asyncio.run(upload_bytes(Request(scope, receive))))


def image(data: bytes) -> None:
    """An uploaded image's bytes, decoded by Pillow and prepared as MNIST was (/classify_image, /ui/predict)."""
    def run() -> None:
        out = preprocess(data, IMAGE_SIZE)
        assert out.shape == (1, IMAGE_SIZE, IMAGE_SIZE) and np.isfinite(out).all()
    answered_or_refused(run)


TARGETS: dict[str, Callable[[bytes], None]] = {
    "octets": octets, "json": json_images, "v2-json": v2_json, "v2-binary": v2_binary, "grpc": grpc_infer,
    "multipart": multipart, "image": image}
