"""The ASGI middleware in front of the service: what must happen before any body is parsed.

Bodies over MAX_BODY_BYTES are refused from their Content-Length, or as soon as a chunked body
grows past it; the rest of such a body (up to DRAIN_LIMIT in all) is read and dropped before the 413,
so that a client that sends its whole body before reading gets the answer, not a reset connection.
A Content-Length that is not a number, and a multipart body without a boundary, get a 400. No route's
logic is here: the body read within the limit is passed on as it came.
"""

from __future__ import annotations

import json
from typing import Any, Awaitable, Callable


MAX_BODY_BYTES = 16 * 1024 * 1024  # 256 images as JSON fit in about 4 MB; uploads are capped at 10 MB
DRAIN_LIMIT = 4 * MAX_BODY_BYTES  # an over-limit body up to this size is read to its end before the 413

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


async def reply(send: Send, status: int, error: str) -> None:
    body = json.dumps({"error": error}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
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


def media_type(raw: str) -> str:
    """A Content-Type header's media type, without its parameters."""
    return raw.split(";")[0].strip().lower()


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
            more = message.get("more_body", False)
            if size > self.max_bytes:
                return await refuse_too_large(receive, send, self.max_bytes, size, declared, complete=not more)
            if not more:
                break
        raw_type = headers.get(b"content-type", b"").decode("latin-1")
        if media_type(raw_type) == "multipart/form-data" and "boundary=" not in raw_type:
            return await reply(send, 400, "a multipart/form-data body needs a boundary in its Content-Type")
        await self.app(scope, replayed(b"".join(chunks), receive), send)
