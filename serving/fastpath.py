"""The bodies most clients send, handed to the worker's routes before BentoML's API layer parses them.

An ASGI layer inside the request gate (serving/limits.py), which has already bounded the body: POST
/classify's body goes to `Routes.classify_body` (raw float32, and JSON {"images": ...}; the rest it
declines, and the request goes on to BentoML's /classify API), POST /classify_image's to
`Routes.classify_upload` (its form parsed once), and every /v2 request to the Open Inference Protocol's
routes (`Routes.v2`, serving/v2.py). Every other request passes untouched. The steps
themselves are in serving/routes.py; this module only picks the route.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request

from serving.limits import Receive, Scope, Send, replayed
from serving.routes import Bound

CLASSIFY, CLASSIFY_IMAGE = "/classify", "/classify_image"
V2 = "/v2"  # the Open Inference Protocol's routes (serving/v2.py)


class FastPath:
    def __init__(self, app: Any, bound: Bound) -> None:
        self.app = app
        self.bound = bound

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        if scope["path"] == V2 or scope["path"].startswith(V2 + "/"):
            response = await self.bound.routes.v2.handle(Request(scope, receive))
            return await response(scope, receive, send)
        if scope["method"] != "POST" or scope["path"] not in (CLASSIFY, CLASSIFY_IMAGE):
            return await self.app(scope, receive, send)
        request = Request(scope, receive)
        if scope["path"] == CLASSIFY_IMAGE:
            response = await self.bound.routes.classify_upload(request)
        else:
            body = await request.body()
            response = await self.bound.routes.classify_body(body, request.headers.get("content-type", ""))
            if response is None:
                return await self.app(scope, replayed(body, receive), send)
        await response(scope, receive, send)
