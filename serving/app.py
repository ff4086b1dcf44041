"""The one ASGI layer the project puts in front of BentoML's app, and the table of every route it answers itself.

A request passes, in order:
  0. access (serving/access.py), when set: a browser's CORS preflight is answered for the allowed origins, and
     with a token set, a request to any route but health without it gets 401;
  1. the drain: after SIGTERM, every answer says `Connection: close` (serving/lifecycle.py);
  2. the gate, before any body is parsed: a body over MAX_BODY_BYTES is refused from its Content-Length, or as
     soon as a chunked body grows past it (the rest of it, up to DRAIN_LIMIT, is read and dropped first, so that
     a client that sends its whole body before reading gets the 413, not a reset connection); a Content-Length
     that is not a number, and a multipart body without a boundary, get a 400;
  3. the route table (`table`): /classify, /classify_image, the page (/ui/...), the Open Inference Protocol
     (/v2/...) and the rewritten /docs.json and /schema.json are answered by serving/routes.py and
     serving/v2.py; every other request (/reconstruct, /explain, /metadata, health, metrics) goes on to
     BentoML's app and its `@bentoml.api` methods (serving/service.py).
A route's error becomes its answer in one place (serving/errors.py, `answered`).
"""

from __future__ import annotations

import json
import mimetypes
from pathlib import Path
from typing import Any, Awaitable, Callable

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Mount, Route, Router
from starlette.staticfiles import StaticFiles

from serving.framework import any_method, cancelled_when_gone, cors, static_file
from serving.access import CHALLENGE, refusal
from serving.errors import JSON_TYPE, NotAllowed, answered, error_message, error_response
from serving.lifecycle import Drain
from serving.limits import DRAIN_LIMIT, MAX_BODY_BYTES
from serving.openapi import fix, fix_schema
from serving.routes import Routes, media_type
from serving.v2 import OpenInference

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]
Handler = Callable[[Request], Awaitable[Response]]

ORT_WEB = Path(__file__).with_name("static") / "ort"  # onnxruntime-web's WASM build, copied by `make web`
mimetypes.add_type("text/javascript", ".mjs")  # browsers load ES modules only with a JavaScript type
mimetypes.add_type("application/wasm", ".wasm")  # and compile WASM while it streams only with this one


class Bound:
    """Where a worker's service puts its routes once it has built them, for this layer, which BentoML builds
    before the service instance. One worker process serves one service instance."""

    def __init__(self) -> None:
        self._routes: Routes | None = None
        self._v2: OpenInference | None = None

    def bind(self, routes: Routes, v2: OpenInference) -> None:
        self._routes, self._v2 = routes, v2

    @property
    def routes(self) -> Routes:
        if self._routes is None:
            raise RuntimeError("the service has not built its routes yet")
        return self._routes

    @property
    def v2(self) -> OpenInference:
        if self._v2 is None:
            raise RuntimeError("the service has not built its routes yet")
        return self._v2


# The route table

class Endpoint:
    """The ASGI app of one route: its handler's answer for the methods it takes (HEAD with GET), a 405 for the
    others, and a raised error's answer (errors.answered). A plain ASGI app, so that Starlette's router calls it
    as it is, without the request/response wrappers it puts around a function (0.1 ms a request)."""

    def __init__(self, methods: tuple[str, ...], handler: Handler) -> None:
        self.methods = set(methods) | ({"HEAD"} if "GET" in methods else set())
        self.allowed = ", ".join(methods)
        self.handler = handler

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        request = Request(scope, receive)
        if scope["method"] in self.methods:
            response = await answered(self.handler(request))
        else:
            response = error_response(NotAllowed(scope["method"], scope["path"], self.allowed))
        await response(scope, receive, send)


def route(path: str, methods: tuple[str, ...], handler: Handler) -> Route:
    """path, answered by handler for these methods and with a 405 for the others."""
    return any_method(Route(path, Endpoint(methods, handler)))


def table(worker: Bound, bentoml_app: Callable) -> list[BaseRoute]:
    """Every route the project answers itself, in one place."""
    def routes(name: str) -> Handler:
        return lambda request: getattr(worker.routes, name)(request)

    def v2(name: str) -> Handler:
        return lambda request: getattr(worker.v2, name)(request)

    def sizes() -> tuple[int, int]:
        runtime = worker.routes.runtime
        return runtime.image_size, runtime.routing_grid

    get, post = ("GET",), ("POST",)
    model, version = "/v2/models/{model}", "/v2/models/{model}/versions/{version}"
    return [
        route("/classify", post, routes("classify")),
        route("/classify_image", post, routes("classify_image")),
        route("/ui/", get, routes("page")),
        route("/ui/predict", post, routes("page_predict")),
        route("/ui/model.onnx", get, routes("model_file")),
        route("/ui/decoder.onnx", get, routes("decoder_file")),
        Mount("/ui/ort", OrtWeb()),
        route("/v2", get, v2("server")),
        route("/v2/health/live", get, v2("live")),
        route("/v2/health/ready", get, v2("ready_route")),
        *[entry for base in (model, version) for entry in (
            route(base, get, v2("model")), route(base + "/ready", get, v2("ready_route")),
            route(base + "/infer", post, v2("infer_route")))],
        route("/v2/{rest:path}", ("GET", "POST"), v2("unknown")),
        Route("/docs.json", Rewritten(bentoml_app, lambda document: fix(document, *sizes()))),
        Route("/schema.json", Rewritten(bentoml_app, fix_schema)),
    ]


class OrtWeb:
    """An ASGI endpoint: the files of onnxruntime-web's WASM build, for the page's in-browser mode; a JSON 404 for
    one that is not there (all of them until `make web`)."""

    def __init__(self) -> None:
        self.files = StaticFiles(directory=ORT_WEB, check_dir=False)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not ORT_WEB.is_dir():
            return await reply(send, 404, "onnxruntime-web is not here: `make web` copies it")
        refused = await static_file(self.files, scope, receive, send)
        if refused is not None:
            await reply(send, *refused)


class Rewritten:
    """An ASGI endpoint: BentoML's answer to the same GET, its JSON rewritten as it leaves (serving/openapi.py)."""

    def __init__(self, app: Callable, rewrite: Callable[[dict[str, Any]], dict[str, Any]]) -> None:
        self.app = app
        self.rewrite = rewrite

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        start: dict[str, Any] = {}
        chunks: list[bytes] = []

        async def keep(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                start.update(message)
            elif message["type"] == "http.response.body":
                chunks.append(message.get("body", b""))

        await self.app(scope, receive, keep)
        body = b"".join(chunks)
        if start.get("status") == 200:
            body = json.dumps(self.rewrite(json.loads(body)), ensure_ascii=False).encode()
        headers = [(k, v) for k, v in start.get("headers", []) if k.lower() != b"content-length"]
        await send({**start, "headers": headers + [(b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})


# The layer

CLIENT_CLOSED = 499  # the status of a request whose client left first (nginx's)


async def reply(send: Send, status: int, error: str, headers: list[tuple[bytes, bytes]] | None = None) -> None:
    body = error_message(error)
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", JSON_TYPE.encode()), (b"content-length", str(len(body)).encode()),
                            *(headers or [])]})
    await send({"type": "http.response.body", "body": body})


async def refuse_too_large(receive: Receive, send: Send, max_bytes: int, read: int, declared: int | None,
                           complete: bool = False) -> None:
    """413 for a body over max_bytes of which `read` bytes were read (all of it when `complete`). The rest of it
    is read and dropped first when the whole body stays within DRAIN_LIMIT: a server that answers and closes
    while the client is still sending makes the client's kernel see a reset, and a plain client never reads
    the answer."""
    while not complete and read <= DRAIN_LIMIT and (declared is None or declared <= DRAIN_LIMIT):
        message = await receive()
        if message["type"] == "http.disconnect":
            return
        read += len(message.get("body", b""))
        if not message.get("more_body", False):
            break
    await reply(send, 413, f"request body over {max_bytes:,} bytes")


def replayed(body: bytes, receive: Receive) -> Receive:
    """A receive that gives the already-read body first, then whatever the connection says next."""
    given = False

    async def replay() -> dict[str, Any]:
        nonlocal given
        if not given:
            given = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


async def answer_unless_gone(app: Callable, scope: Scope, body: bytes, receive: Receive, send: Send) -> None:
    """app's answer to a request whose body is read, cancelled if its client leaves before the answer starts (the
    protocol calls the cancel that the scope holds: serving/framework.py, cancelled_when_gone); a request still waiting for its
    batch then leaves the queue without running (serving/batching.py). An answer already started is finished.
    A cancelled request is still answered, 499 (as nginx names a client that closed first), which uvicorn drops
    for a gone client: BentoML's layers above wait for a request's first message (its timeout middleware, until
    the traffic timeout) and count its status in /metrics."""
    with cancelled_when_gone(scope) as cancel:
        await app(scope, replayed(body, receive), send)
    if cancel.cancelled_caught:
        await reply(send, CLIENT_CLOSED, "the client closed the connection before the answer")


def closing(send: Send) -> Send:
    """send, with `Connection: close` on the answer."""
    async def send_closing(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != b"connection"]
            message = {**message, "headers": [*headers, (b"connection", b"close")]}
        await send(message)

    return send_closing


class Front:
    """ASGI middleware (`CapsNet.add_asgi_middleware`): access, the drain, the gate, then the route table."""

    def __init__(self, app: Callable, worker: Bound, drain: Drain, max_bytes: int = MAX_BODY_BYTES, token: str = "",
                 cors_origins: tuple[str, ...] = ()) -> None:
        self.app = app
        self.drain = drain
        self.max_bytes = max_bytes
        self.token = token
        self.router = Router(routes=table(worker, app), default=self.bentoml)
        # Starlette's CORS middleware in front of the rest: a preflight is answered before the token is asked for
        self.handle = cors(self.guarded, cors_origins) if cors_origins else self.guarded

    async def bentoml(self, scope: Scope, receive: Receive, send: Send) -> None:
        """A request no route of ours answers, on to BentoML's app as it came (without our router in its scope).
        BentoML's APIs here (/reconstruct, /explain, /metadata) take JSON; a multipart form is refused first, since
        BentoML answers a malformed one with a 500 and a traceback (found by fuzz/outside.py)."""
        scope.pop("router", None)
        content_type = dict(scope.get("headers") or []).get(b"content-type", b"").decode("latin-1")
        if scope["method"] == "POST" and media_type(content_type) == "multipart/form-data":
            return await reply(send, 400, f"{scope['path']} takes a JSON body (application/json), not a multipart form")
        await self.app(scope, receive, send)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        await self.handle(scope, receive, send)

    async def guarded(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.token and (why := refusal(self.token, scope["path"], dict(scope["headers"]).get(b"authorization"))):
            return await reply(send, 401, why, [(b"www-authenticate", CHALLENGE.encode())])
        if self.drain.draining:
            send = closing(send)
        headers = dict(scope.get("headers") or [])
        length = headers.get(b"content-length")
        if length is not None and not length.isdigit():
            return await reply(send, 400, "Content-Length is not a number")
        declared = int(length) if length is not None else None
        if declared is not None and declared > self.max_bytes:
            return await refuse_too_large(receive, send, self.max_bytes, 0, declared)
        chunks: list[bytes] = []
        size = 0
        while True:  # read the body, at most max_bytes of it
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            more = message.get("more_body", False)
            if size > self.max_bytes:
                return await refuse_too_large(receive, send, self.max_bytes, size, declared, complete=not more)
            if not more:
                break
        raw_type = headers.get(b"content-type", b"").decode("latin-1")
        if media_type(raw_type) == "multipart/form-data" and "boundary=" not in raw_type:
            return await reply(send, 400, "a multipart/form-data body needs a boundary in its Content-Type")
        await answer_unless_gone(self.router, scope, b"".join(chunks), receive, send)
