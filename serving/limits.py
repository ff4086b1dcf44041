"""The ASGI middleware in front of the service: body size limit (413), upload form check (400), and
/classify's common bodies answered before BentoML's API layer (serving/direct.py).

Bodies over MAX_BODY_BYTES are refused from their Content-Length, or as soon as a chunked body
grows past it; the rest of such a body (up to DRAIN_LIMIT in all) is read and dropped before the 413,
so that a client that sends its whole body before reading gets the answer, not a reset connection.
Uploads to the image route are parsed here first, so that a form without exactly one file field
`image` gets a 400 with a reason instead of reaching the framework's form parsing.
"""

from __future__ import annotations

import json
from typing import Any, Awaitable, Callable

from starlette.datastructures import UploadFile
from starlette.requests import Request

from serving import direct

MAX_BODY_BYTES = 16 * 1024 * 1024  # 256 images as JSON fit in about 4 MB; uploads are capped at 10 MB
DRAIN_LIMIT = 4 * MAX_BODY_BYTES  # an over-limit body up to this size is read to its end before the 413
UPLOAD_ROUTES = {"/classify_image": "image"}  # route -> its one file field

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


async def reply(send: Send, status: int, error: str) -> None:
    body = json.dumps({"error": error}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


async def refuse_too_large(receive: Receive, send: Send, max_bytes: int, read: int, declared: int | None) -> None:
    """413 for a body over max_bytes of which `read` bytes were read. The rest of it is read and dropped
    first when the whole body stays within DRAIN_LIMIT: a server that answers and closes while the client is
    still sending makes the client's kernel see a reset, and a plain client never reads the answer."""
    while read <= DRAIN_LIMIT and (declared is None or declared <= DRAIN_LIMIT):
        message = await receive()
        if message["type"] == "http.disconnect":
            return
        read += len(message.get("body", b""))
        if not message.get("more_body", False):
            break
    await reply(send, 413, f"request body over {max_bytes:,} bytes")


async def form_problem(scope: Scope, body: bytes, field: str) -> str | None:
    """What is wrong with an upload form, or None."""
    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": body, "more_body": False}

    request = Request(scope, receive)
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        return f"send the image as multipart/form-data with the file in field '{field}'"
    try:
        form = await request.form(max_files=1, max_fields=4)
    except Exception as err:  # noqa: BLE001 - any parse failure is the client's malformed form
        return f"malformed multipart body: {err}"
    try:
        keys = list(form.keys())
        if keys != [field] or not isinstance(form[field], UploadFile):
            return f"expected one file field '{field}', got fields {keys}"
    finally:
        await form.close()
    return None


def content_type(raw: bytes) -> str:
    """A Content-Type header's media type, without its parameters."""
    return raw.decode("latin-1").split(";")[0].strip().lower()


class RequestGate:
    def __init__(self, app: Callable, max_bytes: int = MAX_BODY_BYTES) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
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
            if size > self.max_bytes:
                return await refuse_too_large(receive, send, self.max_bytes, size, declared)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        raw_type = headers.get(b"content-type", b"")
        kind = content_type(raw_type)
        if kind == "multipart/form-data" and b"boundary=" not in raw_type:
            return await reply(send, 400, "a multipart/form-data body needs a boundary in its Content-Type")
        if (scope["path"], scope["method"]) == (direct.ROUTE, "POST"):
            if response := await direct.classify(body, kind):
                return await response(scope, receive, send)
        field = UPLOAD_ROUTES.get(scope["path"])
        if field and scope["method"] == "POST" and (problem := await form_problem(scope, body, field)):
            return await reply(send, 400, problem)
        replayed = False

        async def replay() -> dict[str, Any]:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)
