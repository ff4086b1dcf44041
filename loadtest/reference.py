"""The baseline: what a user could write in an afternoon instead of using this project.

Starlette under uvicorn (no access log), one ONNX Runtime session, one `session.run` per request, no
batching and no input checks beyond the parse: JSON `{"images": ...}` or raw float32 on POST /classify.
`python -m loadtest.pinned` measures it beside the service, in the same run.

    python -m loadtest.reference --model models/capsnet-mnist-int8.onnx --port 3100
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import onnxruntime as ort
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse
from starlette.routing import Route


def build_app(model: str, threads: int) -> Starlette:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])

    async def classify(request: Request) -> JSONResponse:
        body = await request.body()
        if request.headers.get("content-type", "").startswith("application/octet-stream"):
            images = np.frombuffer(body, dtype="<f4").reshape(-1, 1, 28, 28)
        else:
            images = np.asarray(json.loads(body)["images"], dtype=np.float32).reshape(-1, 1, 28, 28)
        lengths = session.run(["lengths"], {"image": images})[0]
        return JSONResponse({"labels": lengths.argmax(1).tolist(), "lengths": lengths.tolist()})

    async def ready(request: Request) -> PlainTextResponse:
        return PlainTextResponse("ok")

    return Starlette(routes=[Route("/classify", classify, methods=["POST"]), Route("/readyz", ready)])


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="the hand-written baseline server",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model", required=True, help="ONNX file to serve")
    p.add_argument("--port", type=int, default=3100, help="port on 127.0.0.1")
    p.add_argument("--threads", type=int, default=1, help="ONNX Runtime intra-op threads")
    args = p.parse_args(argv)
    uvicorn.run(build_app(args.model, args.threads), host="127.0.0.1", port=args.port, access_log=False,
                log_level="warning")


if __name__ == "__main__":
    main()
