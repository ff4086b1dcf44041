"""The page to try the model, mounted on the service at /ui (a Starlette app).

GET /ui/ is the page; POST /ui/predict takes the same multipart upload as /classify_image and also
returns the 28x28 input the model saw and its reconstruction, for display. For the page's in-browser
mode: GET /ui/model.onnx is the ONNX file the service runs (the int8 variant on the CPU), and /ui/ort/
holds onnxruntime-web's WASM build, copied from its npm package by `make web` (absent until then: the
page then offers only the server).
"""

from __future__ import annotations

import mimetypes
from pathlib import Path

import anyio
import bentoml
import numpy as np
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from serving.preprocess import preprocess
from serving.batching import Overloaded
from serving.limits import error_response
from serving.runtime import InvalidInput, Prediction

PAGE = Path(__file__).with_name("static") / "index.html"
ORT_WEB = PAGE.parent / "ort"  # ort.wasm.min.mjs, ort-wasm-simd-threaded.{mjs,wasm}: `make web`
mimetypes.add_type("text/javascript", ".mjs")  # browsers load ES modules only with a JavaScript type
mimetypes.add_type("application/wasm", ".wasm")  # and compile WASM while it streams only with this one


async def page(request: Request) -> FileResponse:
    return FileResponse(PAGE, media_type="text/html")


async def predict(request: Request) -> JSONResponse:
    form = await request.form()
    upload = form.get("image")
    if upload is None or isinstance(upload, str):
        return JSONResponse({"error": "send the image as multipart field 'image'"}, status_code=400)
    data = await upload.read()
    batcher = bentoml.get_current_service().batcher

    def run() -> tuple[np.ndarray, Prediction]:
        batch = preprocess(data)[None]
        return batch, batcher.predict(batch)

    try:
        batch, p = await anyio.to_thread.run_sync(run)
    except (InvalidInput, Overloaded) as err:
        return error_response(err)
    return JSONResponse({
        "label": int(p.labels[0]),
        "lengths": p.lengths[0].round(4).tolist(),
        "input": batch[0, 0].round(3).tolist(),
        "reconstruction": p.reconstructions[0].round(3).tolist(),
    })


async def model(request: Request) -> FileResponse:
    return FileResponse(bentoml.get_current_service().runtime.model_path, media_type="application/octet-stream")


app = Starlette(routes=[Route("/", page), Route("/predict", predict, methods=["POST"]), Route("/model.onnx", model),
                        Mount("/ort", StaticFiles(directory=ORT_WEB, check_dir=False), name="ort")])
