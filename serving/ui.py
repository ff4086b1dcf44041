"""The page to try the model, mounted on the service at /ui (a Starlette app).

GET /ui/ is the page; POST /ui/predict takes the same multipart upload as /classify_image and also
returns the 28x28 input the model saw, its reconstruction, the winner's pose and routing map, for
display (serving/routes.py, `Routes.page_predict`). For the page's in-browser mode: GET /ui/model.onnx is the ONNX file the
service runs (the int8 variant on the CPU); GET /ui/decoder.onnx is the decoder alone, which the page's
pose sliders run in the browser; /ui/ort/ holds onnxruntime-web's WASM build, copied from its npm
package by `make web` (absent until then: the page then offers only the server, and no sliders).
"""

from __future__ import annotations

import mimetypes
from pathlib import Path

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from serving.routes import Bound

PAGE = Path(__file__).with_name("static") / "index.html"
ORT_WEB = PAGE.parent / "ort"  # ort.wasm.min.mjs, ort-wasm-simd-threaded.{mjs,wasm}: `make web`
mimetypes.add_type("text/javascript", ".mjs")  # browsers load ES modules only with a JavaScript type
mimetypes.add_type("application/wasm", ".wasm")  # and compile WASM while it streams only with this one


async def page(request: Request) -> FileResponse:
    return FileResponse(PAGE, media_type="text/html")


def make_app(worker: Bound) -> Starlette:
    """The page's app, whose routes use the worker's Routes once the service has built them."""
    async def predict(request: Request) -> JSONResponse:
        return await worker.routes.page_predict(request)

    async def model(request: Request) -> FileResponse:
        return FileResponse(worker.routes.runtime.model_path, media_type="application/octet-stream")

    async def decoder(request: Request) -> Response:
        path = worker.routes.runtime.decoder_path
        if path is None or not path.exists():
            return JSONResponse({"error": "the served model names no decoder file (`make export` writes it)"},
                                status_code=404)
        return FileResponse(path, media_type="application/octet-stream")

    return Starlette(routes=[Route("/", page), Route("/predict", predict, methods=["POST"]),
                             Route("/model.onnx", model), Route("/decoder.onnx", decoder),
                             Mount("/ort", StaticFiles(directory=ORT_WEB, check_dir=False), name="ort")])
