"""Hostile input through the app `bentoml serve` runs (in-process; CAPSNET_TEST_URL sends it to a running
service): every bad request gets a 4xx with a JSON reason, the service stays ready, and the next good
request succeeds. The real process's side (a client that sends its whole body first, memory round after
round) is in tests/test_e2e.py."""

from __future__ import annotations

import io
import json
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

GOOD = [[0.0] * 28] * 28
JSON = {"Content-Type": "application/json"}
OCTETS = {"Content-Type": "application/octet-stream"}


def raw(value: float, images: int = 1) -> bytes:
    return np.full((images, 28, 28), value, dtype="<f4").tobytes()



def png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


NOISE_PNG = png(Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64), dtype=np.uint8)))


def png_header(width: int, height: int) -> bytes:
    """A PNG that claims width x height pixels in its header (which is all the service reads before it refuses
    one too large), with one empty data chunk: a pixel bomb, built in microseconds."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)  # 1-bit grey
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


BOMB_PNG = png_header(20000, 20000)  # 400 M pixels claimed in 60 bytes

class Chunked:
    """A body sent with Transfer-Encoding: chunked (no Content-Length): the gate must count as it reads."""

    def __init__(self, chunks: int, size: int = 1024 * 1024):
        self.chunks, self.size = chunks, size

    def __iter__(self):
        yield b'{"images": ['
        for _ in range(self.chunks):
            yield b" " * self.size


# (name, route, request kwargs, expected status, a fragment of the reason)
CASES = [
    ("invalid JSON", "/classify", {"content": b'{"images": [', "headers": JSON}, 400, "JSON"),
    ("empty body", "/classify", {"content": b"", "headers": JSON}, 400, "the body is empty"),
    ("top-level array", "/classify", {"content": b"[1, 2]", "headers": JSON}, 400, "should be an object"),
    ("top-level string", "/classify", {"content": b'"hello"', "headers": JSON}, 400, "should be an object"),
    ("missing field", "/classify", {"json": {}}, 400, "images"),
    ("misnamed field", "/classify", {"json": {"imgs": [GOOD]}}, 400, "images"),
    ("images a number", "/classify", {"json": {"images": 5}}, 400, "array"),
    ("images an object", "/classify", {"json": {"images": {"a": 1}}}, 400, "array"),
    ("images null", "/classify", {"json": {"images": None}}, 400, "array"),
    ("empty batch", "/classify", {"json": {"images": []}}, 400, "empty"),
    ("flat pixels", "/classify", {"json": {"images": [[1, 2]]}}, 400, "28x28"),
    ("reshapeable 784", "/classify", {"json": {"images": [[0.1] * 784]}}, 400, "28x28"),
    ("27 rows", "/classify", {"json": {"images": [[[0.1] * 28] * 27]}}, 400, "28x28"),
    ("3 channels", "/classify", {"json": {"images": [[GOOD] * 3]}}, 400, "28x28"),
    ("ragged batch", "/classify", {"json": {"images": [GOOD, [[0.1] * 28] * 27]}}, 400, "ragged"),
    ("strings", "/classify", {"json": {"images": [[["0.5"] * 28] * 28]}}, 400, "numbers"),
    ("nulls", "/classify", {"json": {"images": [[[None] * 28] * 28]}}, 400, "numbers"),
    ("booleans", "/classify", {"json": {"images": [[[True] * 28] * 28]}}, 400, "numbers"),
    ("NaN", "/classify", {"content": json.dumps({"images": [[[float("nan")] * 28] * 28]}), "headers": JSON}, 400,
     "NaN or Infinity"),
    ("Infinity", "/classify", {"content": json.dumps({"images": [[[float("inf")] * 28] * 28]}), "headers": JSON},
     400, "NaN or Infinity"),
    ("-Infinity", "/classify", {"content": json.dumps({"images": [[[float("-inf")] * 28] * 28]}), "headers": JSON},
     400, "NaN or Infinity"),
    ("overflowing number", "/classify", {"content": '{"images": [[[1e400' + ", 0" * 27 + "]" + (", [" + ", ".join(
        ["0"] * 28) + "]") * 27 + "]]}", "headers": JSON}, 400, "NaN or Infinity"),
    ("above 1", "/classify", {"json": {"images": [[[1.5] * 28] * 28]}}, 400, "[0, 1]"),
    ("below 0", "/classify", {"json": {"images": [[[-0.5] * 28] * 28]}}, 400, "[0, 1]"),
    ("over the batch cap", "/classify", {"json": {"images": [GOOD] * 257}}, 413, "at most 256"),
    ("deeply nested", "/classify", {"content": '{"images": ' + "[" * 100_000 + "]" * 100_000 + "}",
                                    "headers": JSON}, 400, "recursion limit"),
    ("body over the limit", "/classify", {"content": b'{"images": [' + b" " * (17 * 1024 * 1024) + b"]}",
                                          "headers": JSON}, 413, "bytes"),
    ("chunked body over the limit", "/classify", {"content": Chunked(17), "headers": JSON}, 413, "bytes"),
    ("upload over 10 MiB", "/classify_image", {"files": {"image": ("big.png", b"\x89PNG" + bytes(11 * 2**20),
                                                                    "image/png")}}, 413, "at most 10,485,760"),
    # a form to BentoML's JSON APIs: BentoML answered a malformed one with a 500 and a traceback (fuzz/outside.py)
    ("a malformed form to /reconstruct", "/reconstruct", {"content": b"--fuzzb\xff\xfeoundary\r\n", "headers": {
        "Content-Type": "multipart/form-data; boundary=fuzzboundary"}}, 400, "takes a JSON body"),
    ("a form to /explain", "/explain", {"files": {"image": ("x.png", NOISE_PNG, "image/png")}}, 400, "takes a JSON body"),
    ("a malformed form to /metadata", "/metadata", {"content": b"--fuzz\"", "headers": {
        "Content-Type": "multipart/form-data; boundary=fuzzboundary"}}, 400, "takes a JSON body"),
    ("reconstruct bad shape", "/reconstruct", {"json": {"images": [[1, 2]]}}, 400, "28x28"),
    ("not an image", "/classify_image", {"files": {"image": ("x.png", b"hello, world", "image/png")}}, 400,
     "not an image"),
    ("truncated image", "/classify_image", {"files": {"image": ("x.png", NOISE_PNG[:2000], "image/png")}}, 400,
     "truncated"),
    ("malformed BMP header (fuzz/findings/image)", "/classify_image",
     {"files": {"image": ("x.bmp", b"BM" + bytes(60), "image/bmp")}}, 400, "header is malformed"),
    ("empty image", "/classify_image", {"files": {"image": ("x.png", b"", "image/png")}}, 400, "empty"),
    ("wrong form field", "/classify_image", {"files": {"file": ("x.png", NOISE_PNG, "image/png")}}, 400, "image"),
    ("pixel bomb", "/classify_image", {"files": {"image": ("bomb.png", BOMB_PNG, "image/png")}}, 413, "pixels"),
    ("JSON to the upload route", "/classify_image", {"json": {"images": [GOOD]}}, 400, "multipart"),
    ("text instead of a file", "/classify_image", {"files": {"image": (None, b"hello")}}, 400, "one file field"),
    ("form not multipart", "/classify_image", {"data": {"image": "hello"}}, 400, "multipart"),
    ("two files", "/classify_image", {"files": [("image", ("a.png", NOISE_PNG, "image/png")),
                                               ("image", ("b.png", NOISE_PNG, "image/png"))]}, 400,
     "Too many files"),
    ("octets: empty body", "/classify", {"content": b"", "headers": OCTETS}, 400, "multiple of 3136"),
    ("octets: partial image", "/classify", {"content": raw(0.5)[:-4], "headers": OCTETS}, 400, "3136 bytes"),
    ("octets: NaN", "/classify", {"content": raw(float("nan")), "headers": OCTETS}, 400, "NaN"),
    ("octets: above 1", "/classify", {"content": raw(2.0), "headers": OCTETS}, 400, "[0, 1]"),
    ("octets: over the batch cap", "/classify", {"content": raw(0.5, 257), "headers": OCTETS}, 413, "at most 256"),
    ("explain: invalid JSON", "/explain", {"content": b'{"images": [', "headers": JSON}, 400, "JSON"),
    ("explain: missing field", "/explain", {"json": {}}, 400, "images"),
    ("explain: empty batch", "/explain", {"json": {"images": []}}, 400, "empty"),
    ("explain: 27 rows", "/explain", {"json": {"images": [[[0.1] * 28] * 27]}}, 400, "28x28"),
    ("explain: strings", "/explain", {"json": {"images": [[["0.5"] * 28] * 28]}}, 400, "numbers"),
    ("explain: NaN", "/explain", {"content": json.dumps({"images": [[[float("nan")] * 28] * 28]}), "headers": JSON},
     400, "NaN"),
    ("explain: above 1", "/explain", {"json": {"images": [[[1.5] * 28] * 28]}}, 400, "[0, 1]"),
    ("explain: over its cap", "/explain", {"json": {"images": [GOOD] * 17}}, 413, "at most 16"),
    ("explain: body over the limit", "/explain", {"content": b'{"images": [' + b" " * (17 * 1024 * 1024) + b"]}",
                                                  "headers": JSON}, 413, "bytes"),
    ("explain: raw float32", "/explain", {"content": raw(0.5), "headers": OCTETS}, 400, ""),
]


@pytest.mark.parametrize("name, route, kwargs, status, fragment", CASES, ids=[c[0] for c in CASES])
def test_bad_request(client, digits, name, route, kwargs, status, fragment):
    r = client.post(route, **kwargs)
    assert r.status_code == status, r.text[:300]
    body = r.json()
    assert isinstance(body.get("error"), str) and body["error"]
    assert fragment in body["error"] + json.dumps(body.get("detail", ""))
    assert client.get("/readyz").status_code == 200
    ok = client.post("/classify", json={"images": [digits[0][0].tolist()]})
    assert ok.status_code == 200 and ok.json()["labels"] == [int(digits[2][0])]
