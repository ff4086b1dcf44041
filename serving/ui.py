"""The page to try the model, mounted on the service at /ui (a Starlette app).

GET /ui/ is the page; POST /ui/predict takes the same multipart upload as /classify_image and also
returns the 28x28 input the model saw, its reconstruction and the explanation (/explain's fields for
the one image), for display. For the page's in-browser mode: GET /ui/model.onnx is the ONNX file the
service runs (the int8 variant on the CPU); GET /ui/decoder.onnx is the decoder alone, which the page's
pose sliders run in the browser; /ui/ort/ holds onnxruntime-web's WASM build, copied from its npm
package by `make web` (absent until then: the page then offers only the server, and no sliders).
"""

from __future__ import annotations

import mimetypes
from pathlib import Path

import anyio
import bentoml
import numpy as np
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from serving.answers import error_response
from serving.preprocess import preprocess
from serving.runtime import Explanation, InvalidInput

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
    runtime = bentoml.get_current_service().runtime

    def run() -> tuple[np.ndarray, Explanation]:
        batch = preprocess(data)[None]
        return batch, runtime.explain(batch)

    try:
        batch, e = await anyio.to_thread.run_sync(run)
    except InvalidInput as err:
        return error_response(err)
    return JSONResponse({
        "label": int(e.labels[0]),
        "lengths": e.lengths[0].round(4).tolist(),
        "input": batch[0, 0].round(3).tolist(),
        "reconstruction": e.reconstructions[0].round(3).tolist(),
        "pose": e.poses[0].tolist(),
        "routing_map": e.routing_maps[0].round(4).tolist(),
    })


async def model(request: Request) -> FileResponse:
    return FileResponse(bentoml.get_current_service().runtime.model_path, media_type="application/octet-stream")


async def decoder(request: Request) -> Response:
    path = bentoml.get_current_service().runtime.decoder_path
    if path is None or not path.exists():
        return JSONResponse({"error": "the served model names no decoder file (`make export` writes it)"},
                            status_code=404)
    return FileResponse(path, media_type="application/octet-stream")


app = Starlette(routes=[Route("/", page), Route("/predict", predict, methods=["POST"]), Route("/model.onnx", model),
                        Route("/decoder.onnx", decoder),
                        Mount("/ort", StaticFiles(directory=ORT_WEB, check_dir=False), name="ort")])
