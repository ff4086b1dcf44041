"""POST /classify answered before BentoML's API layer, for the bodies most clients send.

Most clients send one digit per request; for them the framework's per-request work (parsing the body
into its input model, the hand-off to a thread) cost more than the model (BENCHMARKS.md). RequestGate
(serving/limits.py) hands this module every POST /classify body, and it answers two kinds itself:

- Content-Type application/octet-stream: N x 28 x 28 float32 little-endian values in [0, 1]
  (`images.astype("<f4").tobytes()`), no JSON;
- JSON (Content-Type application/json, or none) that is an object with the one key "images": checked
  by the same validate_images as the JSON API.

Any other body (malformed JSON, other keys, other media types) goes on to BentoML's /classify API,
whose answers and errors stay as they are. The answer is /classify's JSON either way.
"""

from __future__ import annotations

import bentoml
import numpy as np
import orjson
from starlette.responses import JSONResponse

from serving.answers import answer, error_response
from serving.batching import Overloaded
from serving.runtime import InvalidInput, parse_octets, validate_images

ROUTE = "/classify"
RAW = "application/octet-stream"
JSON_TYPES = ("application/json", "")  # BentoML reads a body without a Content-Type as JSON too


def images_from(body: bytes, media_type: str) -> np.ndarray | None:
    """The checked images of a /classify body this module answers; None for one BentoML's API should answer.
    Raises InvalidInput (400) or TooLarge (413)."""
    if media_type == RAW:
        return parse_octets(body)
    if media_type not in JSON_TYPES:
        return None
    try:
        data = orjson.loads(body)  # about 4x faster than json.loads on a digit (BENCHMARKS.md)
    except orjson.JSONDecodeError:  # BentoML's parser says what is wrong with it (orjson also refuses NaN, which
        return None  # BentoML reads, and which the API then answers with validate_images' reason)
    if not isinstance(data, dict) or data.keys() != {"images"}:
        return None
    return validate_images(data["images"])


async def classify(body: bytes, media_type: str) -> JSONResponse | None:
    """/classify's answer (or its 400, 413, 503) for the bodies this module answers; None for the others."""
    try:
        images = images_from(body, media_type)
        if images is None:
            return None
        prediction = await bentoml.get_current_service().batcher.predict_async(images)
    except (InvalidInput, Overloaded) as err:
        return error_response(err)
    return answer(prediction.classify_answer())
