"""A worker's life under a process manager: the drain on SIGTERM.

The drain contract (docs/serving.md, "Stopping and restarting"). On SIGTERM a worker
  1. answers readiness with 503 at once (`/readyz`, through BentoML's `__is_ready__`), so that a load
     balancer or Kubernetes stops sending it new work; liveness stays 200;
  2. keeps accepting and answering for `drain_seconds` (CAPSNET_DRAIN_SECONDS), every answer with
     `Connection: close`, so that clients holding a kept-alive connection move to another replica;
  3. then stops taking connections, as uvicorn does on its own SIGTERM: the requests still running are
     answered, for at most `drain_timeout` seconds (CAPSNET_DRAIN_TIMEOUT), and the worker exits.
A second SIGTERM during the window skips the rest of it. `bentoml serve` passes SIGTERM to its workers,
waits for them, and exits 0.

How SIGTERM is taken from uvicorn, and the quick restart of a crashed worker: serving/framework.py.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Awaitable, Callable

from serving.framework import UvicornServer, take_sigterm

log = logging.getLogger("bentoml.capsnet")  # BentoML configures its loggers in each worker


class Drain:
    """This worker's drain state, and the SIGTERM handler that starts it."""

    def __init__(self, seconds: float, timeout: float) -> None:
        self.seconds = seconds
        self.timeout = timeout
        self.draining = False
        self._server: UvicornServer | None = None  # uvicorn's Server, whose SIGTERM handler we take over
        self._loop: asyncio.AbstractEventLoop | None = None
        self.on_stop: list[Callable[[], Awaitable[Any]]] = []  # other servers of this worker (gRPC), stopped with it

    def install(self) -> bool:
        """Take over SIGTERM from uvicorn in this worker (call it from the event loop, in the main thread).
        False, and uvicorn's own SIGTERM kept, where there is no uvicorn handler to take over (a test client)."""
        server = take_sigterm(self._on_sigterm)
        if server is None:
            return False
        self._server, self._loop = server, asyncio.get_running_loop()
        return True

    @property
    def tls(self) -> tuple[str, str] | None:
        """The HTTPS certificate and key of this worker's uvicorn, when it serves TLS (framework.UvicornServer)."""
        return self._server.tls if self._server is not None else None

    def _on_sigterm(self, signum: int, frame: Any) -> None:
        assert self._loop is not None
        if self.draining:  # a second SIGTERM: stop taking connections now
            self._loop.call_soon_threadsafe(self.stop)
            return
        self.draining = True
        log.info("SIGTERM: not ready; answering with Connection: close for %.1f s, then stopping", self.seconds)
        self._loop.call_soon_threadsafe(self._loop.call_later, self.seconds, self.stop)

    def stop(self) -> None:
        """Let uvicorn shut down (no new connections, running requests answered), at most `timeout` seconds."""
        assert self._loop is not None and self._server is not None
        if self._server.stopping:
            return
        self._server.stop()
        for stop in self.on_stop:
            self._loop.create_task(stop())
        self._loop.call_later(self.timeout, self._force)

    def _force(self) -> None:
        log.warning("drain: requests still running after %.1f s; exiting without them", self.timeout)
        assert self._server is not None
        self._server.force()
