"""Each fuzz target's seeds: real MNIST test digits in the target's form, and the hostile cases written for the
routes (tests/test_hostile.py, tests/test_v2.py, tests/test_grpc.py) in a form small enough to mutate fast."""

from __future__ import annotations

import io
import json
import struct
import zlib

import numpy as np
from PIL import Image

from fuzz.targets import BOUNDARY, HEADER_DIGITS

SIZE = 28


def v2_header(shape: list[int], binary_size: int | None = None, outputs: list[dict] | None = None, **extra) -> dict:
    tensor: dict = {"name": "image", "datatype": "FP32", "shape": shape}
    if binary_size is not None:
        tensor["parameters"] = {"binary_data_size": binary_size}
    return {"inputs": [tensor], "outputs": outputs if outputs is not None else [{"name": "lengths"}], **extra}


def png(image: np.ndarray, mode: str = "L") -> bytes:
    buf = io.BytesIO()
    Image.fromarray((image * 255).astype(np.uint8)).convert(mode).save(buf, format="PNG")
    return buf.getvalue()


def png_claiming(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height pixels, with no pixel data (the pixel bomb)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b""))


def form(content: bytes, field: str = "image", filename: str | None = "digit.png", kind: str = "image/png") -> bytes:
    disposition = f'form-data; name="{field}"' + (f'; filename="{filename}"' if filename else "")
    return (f"--{BOUNDARY}\r\nContent-Disposition: {disposition}\r\nContent-Type: {kind}\r\n\r\n".encode()
            + content + f"\r\n--{BOUNDARY}--\r\n".encode())


def grpc_message(images: np.ndarray, raw: bool = True, **changes) -> bytes:
    from serving.v2_proto import MESSAGES

    request = MESSAGES["ModelInferRequest"](model_name="capsnet")
    tensor = request.inputs.add(name=changes.get("name", "image"), datatype=changes.get("datatype", "FP32"),
                                shape=changes.get("shape", list(images.shape)))
    if raw:
        request.raw_input_contents.append(images.astype("<f4").tobytes())
    else:
        tensor.contents.fp32_contents.extend(images.reshape(-1).tolist())
    output = request.outputs.add(name=changes.get("output", "lengths"))
    if changes.get("binary_output"):
        output.parameters["binary_data"].bool_param = True
    return request.SerializeToString()


def seeds(digits: np.ndarray) -> dict[str, list[bytes]]:
    """Each target's seeds from `digits` (N >= 2, SIZE x SIZE float32 in [0, 1])."""
    one, two = digits[:1].round(2), digits[:2].round(2)
    octets = [one.astype("<f4").tobytes(), two.astype("<f4").tobytes(), np.full((1, SIZE, SIZE), np.nan, "<f4").tobytes(),
              np.full((1, SIZE, SIZE), 2.0, "<f4").tobytes(), one.astype("<f4").tobytes()[:-4], b""]
    json_bodies = [json.dumps({"images": one.tolist()}).encode(), json.dumps({"images": two[:, None].tolist()}).encode(),
                   b'{"images": [', b"[1, 2]", b'{"images": 5}', b'{"images": []}', b'{"images": [[1, 2]]}',
                   b'{"images": [[["0.5"]]]}', b'{"images": [[[NaN]]]}', b'{"images": [[[1e400]]]}',
                   b'{"images": ' + b"[" * 200 + b"]" * 200 + b"}"]
    raw = one[:, None].astype("<f4").tobytes()
    with_data = v2_header([1, 1, SIZE, SIZE])
    with_data["inputs"][0]["data"] = one.reshape(-1).tolist()
    v2_bodies = [json.dumps(with_data).encode(), json.dumps(v2_header([10**9, 1, SIZE, SIZE])).encode(), json.dumps(v2_header([1.5, 1, SIZE, SIZE])).encode(),
        json.dumps({"inputs": [{"name": "image", "datatype": "INT64", "shape": [1, 1, SIZE, SIZE], "data": [0] * 4}],
                    "outputs": [{"name": "labels", "parameters": {"binary_data": True}}],
                    "parameters": {"binary_data_output": True}}).encode(), b"{not json", b"[1, 2]"]
    header = json.dumps(v2_header([1, 1, SIZE, SIZE], len(raw), [{"name": "lengths", "parameters": {"binary_data": True}}])).encode()
    length = str(len(header)).rjust(HEADER_DIGITS).encode()
    v2_binary = [length + header + raw, length + header + raw[:-4], b"999999" + header + raw, b"abc   " + header + raw,
                 str(len(header)).rjust(HEADER_DIGITS, "0").encode() + header + raw]
    grpc = [grpc_message(one[:, None]), grpc_message(two[:, None], raw=False, binary_output=True),
            grpc_message(one[:, None], shape=[10**9, 1, SIZE, SIZE]), grpc_message(one[:, None], datatype="INT64"),
            grpc_message(one[:, None], output="labels"), grpc_message(one[:, None], name="images"), b""]
    digit_png = png(one[0])
    images = [digit_png, png(1 - one[0], "RGBA"), png(one[0], "P"), png_claiming(20000, 20000), digit_png[:200],
              b"hello, world", b"GIF89a" + bytes(20), b"BM" + bytes(60)]
    multipart = [form(digit_png), form(b""), form(digit_png, field="file"), form(b"hello", filename=None),
                 form(digit_png) + form(digit_png)[len(BOUNDARY) + 4:], f"--{BOUNDARY}--\r\n".encode()]
    return {"octets": octets, "json": json_bodies, "v2-json": v2_bodies, "v2-binary": v2_binary, "grpc": grpc,
            "image": images, "multipart": multipart}
