"""Bounds on what one connection may hold: a read deadline, and a cap on connections per worker.

uvicorn (which BentoML runs in each worker) waits for a request's header without any limit, so a client
that sends half a header, a byte now and then, holds its connection forever. Here:

  - a request must arrive whole, header and body, within `read_timeout` seconds (CAPSNET_READ_TIMEOUT)
    of the connection's start or of the previous answer on it; otherwise the connection gets a 408
    (if it sent anything) and is closed. A request that has arrived whole may take as long as it needs;
  - a worker holds at most `max_connections` open connections (CAPSNET_MAX_CONNECTIONS); a new one
    over that is closed at once.

BentoML builds uvicorn's config itself and passes no protocol class, so uvicorn's "auto" protocol is
pointed at GuardedHTTPProtocol (`install`, at the service's import, before uvicorn loads its config).
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn import config as uvicorn_config
from uvicorn.protocols.http.auto import AutoHTTPProtocol

_BODY = b'{"error": "the request did not arrive in time"}'
TIMED_OUT = (b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\nconnection: close\r\n"
             b"content-length: %d\r\n\r\n%s" % (len(_BODY), _BODY))


class GuardedHTTPProtocol(AutoHTTPProtocol):  # type: ignore[misc, valid-type]
    read_timeout: float = 10.0
    max_connections: int = 1000

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self._deadline: asyncio.TimerHandle | None = None
        super().connection_made(transport)
        if len(self.connections) > self.max_connections:
            transport.close()
            return
        self._arm()

    def data_received(self, data: bytes) -> None:
        self._heard = True
        super().data_received(data)

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _arm(self) -> None:
        """Start the clock for the next request: it must be whole before read_timeout."""
        self._disarm()
        self._cycle_at_arm: Any = self.cycle
        self._heard = False
        self._deadline = self.loop.call_later(self.read_timeout, self._read_timed_out)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _read_timed_out(self) -> None:
        self._deadline = None
        cycle = self.cycle
        header_missing = cycle is self._cycle_at_arm  # no new request's header arrived
        body_missing = not header_missing and cycle.more_body
        if (header_missing or body_missing) and not self.transport.is_closing():
            if self._heard and (header_missing or not cycle.response_started):
                self.transport.write(TIMED_OUT)
            self.transport.close()


def install(read_timeout: float, max_connections: int) -> None:
    """Make uvicorn's default ("auto") protocol the guarded one, with these bounds."""
    GuardedHTTPProtocol.read_timeout = read_timeout
    GuardedHTTPProtocol.max_connections = max_connections
    uvicorn_config.HTTP_PROTOCOLS["auto"] = f"{__name__}:GuardedHTTPProtocol"
