"""POST /classify with Content-Type: application/octet-stream: the images as raw float32, no JSON.

The body is N x 28 x 28 float32 little-endian values in [0, 1] (`images.astype("<f4").tobytes()`);
the answer is the same JSON as /classify's. RequestGate hands such requests here before BentoML
parses anything, which saves the JSON decoding and the framework's per-request work.
"""

from __future__ import annotations

import anyio
import bentoml

from serving.runtime import parse_octets

CONTENT_TYPE = "application/octet-stream"
ROUTE = "/classify"


async def classify_octets(body: bytes) -> dict[str, list]:
    """The /classify answer for a raw body; raises InvalidInput (400/413) or Overloaded (503)."""
    batcher = bentoml.get_current_service().batcher
    prediction = await anyio.to_thread.run_sync(lambda: batcher.predict(parse_octets(body)))
    return prediction.classify_answer()
