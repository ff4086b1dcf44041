"""The errors a request can meet, and their one mapping to an HTTP status and an `{"error": why}` body.

Every part of the service that refuses a request raises one of these; only `status_of` and `error_response`
(and `error_message`, for the raw ASGI layer that answers before a route) turn them into answers.
"""

from __future__ import annotations

from typing import Awaitable

import orjson
from starlette.responses import Response

JSON_TYPE = "application/json"


class InvalidInput(ValueError):
    """The request is malformed; the message says how (400)."""


class TooLarge(InvalidInput):
    """The request is over a size limit (413)."""


class NotFound(LookupError):
    """An unknown route, model or version (404)."""


class NotAllowed(InvalidInput):
    """A method the route does not take (405); `allowed` is what it takes."""

    def __init__(self, method: str, path: str, allowed: str) -> None:
        super().__init__(f"{method} is not allowed on {path}; use {allowed}")
        self.allowed = allowed


class Overloaded(RuntimeError):
    """Too many requests are waiting for the model (503)."""


STATUS: list[tuple[type[Exception], int]] = [(TooLarge, 413), (NotAllowed, 405), (InvalidInput, 400),
                                             (NotFound, 404), (Overloaded, 503)]
ANSWERED = tuple(kind for kind, _ in STATUS)  # the errors that are the client's or the load's, never ours


def status_of(err: Exception) -> int:
    return next(status for kind, status in STATUS if isinstance(err, kind))


def error_message(why: str) -> bytes:
    return orjson.dumps({"error": why})


def error_response(err: Exception) -> Response:
    """The answer to a request refused with err: its status, `{"error": why}` (and Allow for a 405)."""
    headers = {"Allow": err.allowed} if isinstance(err, NotAllowed) else None
    return Response(error_message(str(err)), status_of(err), headers=headers, media_type=JSON_TYPE)


async def answered(work: Awaitable[Response]) -> Response:
    """work's answer, or the answer to the error it raised: the one place a route's error becomes a response."""
    try:
        return await work
    except ANSWERED as err:
        return error_response(err)
