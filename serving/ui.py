"""The page to try the model, mounted on the service at /ui (a Starlette app).

GET /ui/ is the page; POST /ui/predict takes the same multipart upload as /classify_image and also
returns the 28x28 input the model saw and its reconstruction, for display.
"""

from __future__ import annotations

from pathlib import Path

import anyio
import bentoml
import numpy as np
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse
from starlette.routing import Route

from serving.preprocess import preprocess
from serving.batching import Overloaded
from serving.limits import error_response
from serving.runtime import InvalidInput, Prediction

PAGE = Path(__file__).with_name("static") / "index.html"


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


app = Starlette(routes=[Route("/", page), Route("/predict", predict, methods=["POST"])])
