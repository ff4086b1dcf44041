"""The page to try the model, mounted on the service at /ui (a Starlette app).

GET /ui/ is the page; POST /ui/predict takes the same multipart upload as /classify_image and also
returns the 28x28 input the model saw and its reconstruction, for display.
"""

from __future__ import annotations

from pathlib import Path

import bentoml
import numpy as np
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse
from starlette.routing import Route

from serving.preprocess import preprocess
from serving.runtime import IMAGE_SIZE, InvalidInput, TooLarge

PAGE = Path(__file__).with_name("static") / "index.html"


async def page(request: Request) -> FileResponse:
    return FileResponse(PAGE, media_type="text/html")


async def predict(request: Request) -> JSONResponse:
    form = await request.form()
    upload = form.get("image")
    if upload is None or isinstance(upload, str):
        return JSONResponse({"error": "send the image as multipart field 'image'"}, status_code=400)
    try:
        batch = preprocess(await upload.read())[None]
    except InvalidInput as err:
        return JSONResponse({"error": str(err)}, status_code=413 if isinstance(err, TooLarge) else 400)
    service = bentoml.get_current_service()
    both = await service.engine.to_async.lengths_and_reconstructions(batch)
    n_classes = both.shape[1] - IMAGE_SIZE * IMAGE_SIZE
    lengths = both[0, :n_classes]
    return JSONResponse({
        "label": int(np.argmax(lengths)),
        "lengths": lengths.round(4).tolist(),
        "input": batch[0, 0].round(3).tolist(),
        "reconstruction": both[0, n_classes:].reshape(IMAGE_SIZE, IMAGE_SIZE).round(3).tolist(),
    })


app = Starlette(routes=[Route("/", page), Route("/predict", predict, methods=["POST"])])
