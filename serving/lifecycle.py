"""A worker's life under a process manager: the drain on SIGTERM, and a quick restart after a crash.

The drain contract (docs/serving.md, "Stopping and restarting"). On SIGTERM a worker
  1. answers readiness with 503 at once (`/readyz`, through BentoML's `__is_ready__`), so that a load
     balancer or Kubernetes stops sending it new work; liveness stays 200;
  2. keeps accepting and answering for `drain_seconds` (CAPSNET_DRAIN_SECONDS), every answer with
     `Connection: close`, so that clients holding a kept-alive connection move to another replica;
  3. then stops taking connections, as uvicorn does on its own SIGTERM: the requests still running are
     answered, for at most `drain_timeout` seconds (CAPSNET_DRAIN_TIMEOUT), and the worker exits.
A second SIGTERM during the window skips the rest of it. `bentoml serve` passes SIGTERM to its workers,
waits for them, and exits 0.

Restarts: BentoML's process manager (circus) looks at its workers every 10 s, so a worker that died
waited up to 10 s before its replacement started, which then took about 2 s to be ready. RESPAWN_CHECK_S
makes that look twice a second (`quick_respawn`, applied in the `bentoml serve` process).
"""

from __future__ import annotations

import asyncio
import logging
import signal
import threading
from typing import Any, Callable

from serving.limits import Receive, Scope, Send

RESPAWN_CHECK_S = 0.5  # how often the process manager restarts dead workers (BentoML's default: 10 s)
log = logging.getLogger("bentoml.capsnet")  # BentoML configures its loggers in each worker


class Drain:
    """This worker's drain state, and the SIGTERM handler that starts it."""

    def __init__(self, seconds: float, timeout: float) -> None:
        self.seconds = seconds
        self.timeout = timeout
        self.draining = False
        self._server: Any = None  # uvicorn's Server, whose SIGTERM handler we take over
        self._loop: asyncio.AbstractEventLoop | None = None

    def install(self) -> bool:
        """Take over SIGTERM from uvicorn in this worker (call it from the event loop, in the main thread).
        False, and uvicorn's own SIGTERM kept, where there is no uvicorn handler to take over (a test client)."""
        if threading.current_thread() is not threading.main_thread():
            return False
        server = getattr(signal.getsignal(signal.SIGTERM), "__self__", None)
        if not hasattr(server, "should_exit") or not hasattr(server, "force_exit"):
            return False
        self._server, self._loop = server, asyncio.get_running_loop()
        signal.signal(signal.SIGTERM, self._on_sigterm)
        return True

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
        assert self._loop is not None
        if self._server.should_exit:
            return
        self._server.should_exit = True
        self._loop.call_later(self.timeout, self._force)

    def _force(self) -> None:
        log.warning("drain: requests still running after %.1f s; exiting without them", self.timeout)
        self._server.force_exit = True


class CloseWhileDraining:
    """ASGI middleware: while the worker drains, every answer says `Connection: close`."""

    def __init__(self, app: Callable, drain: Drain) -> None:
        self.app = app
        self.drain = drain

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self.drain.draining:
            return await self.app(scope, receive, send)

        async def send_closing(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != b"connection"]
                message = {**message, "headers": [*headers, (b"connection", b"close")]}
            await send(message)

        await self.app(scope, receive, send_closing)


def quick_respawn() -> bool:
    """Make BentoML's process manager check its workers every RESPAWN_CHECK_S instead of every 10 s.

    BentoML builds its circus arbiter with `check_delay=10` and offers no setting for it; its factory looks
    up the arbiter class by name when called, so a subclass that fixes the period takes effect for the
    `bentoml serve` that imports this service. False (and BentoML's default kept) if that factory changed."""
    try:
        from bentoml._internal.utils import circus
    except ImportError:
        return False
    base = getattr(circus, "Arbiter", None)
    if base is None or getattr(base, "capsnet_quick", False):
        return base is not None

    class QuickRespawnArbiter(base):  # type: ignore[misc, valid-type]
        capsnet_quick = True

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            kwargs["check_delay"] = RESPAWN_CHECK_S
            super().__init__(*args, **kwargs)

    circus.Arbiter = QuickRespawnArbiter
    return True
