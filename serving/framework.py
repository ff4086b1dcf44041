"""Every place the service touches BentoML's or uvicorn's internals, and why; nothing else in serving/ does.

Checked against bentoml==1.4.40 (pinned in pyproject.toml) and the uvicorn==0.55.0 it runs; `problems()`
says which internal has changed shape, and tests/test_framework.py fails on any, so that an upgrade of either
fails loudly instead of quietly serving without a patch.

1. The socket (uvicorn's HTTP protocol). uvicorn waits for a request's header without any limit, so a client
   that sends half a header, a byte now and then, holds its connection forever. `GuardedHTTPProtocol`:
     - a request must arrive whole, header and body, within `read_timeout` seconds (CAPSNET_READ_TIMEOUT) of
       the connection's start or of the previous answer on it; otherwise a 408 (if it sent anything) and the
       connection is closed. A request that has arrived whole may take as long as it needs;
     - a worker holds at most `max_connections` open connections (CAPSNET_MAX_CONNECTIONS); one more is closed;
     - a client that leaves before its answer starts: uvicorn marks the request disconnected and lets the app
       run on; the protocol calls what the request's ASGI scope holds under GONE (cancelled_when_gone puts a cancel
       scope's `cancel` there), so that a request still waiting for its batch is dropped.
   BentoML builds uvicorn's config itself and passes no protocol class, so `guard_connections` points
   uvicorn's "auto" entry of `uvicorn.config.HTTP_PROTOCOLS` at it, at the service's import.
2. SIGTERM (uvicorn's Server). uvicorn's own handler stops taking connections at once; the drain
   (serving/lifecycle.py) must answer a while first. `take_sigterm` finds uvicorn's Server through the handler
   it installed (`Server.handle_exit`, a bound method) and puts ours in its place; `UvicornServer` then stops
   it as its own handler would (`should_exit`, then `force_exit`). Its `config` also tells the gRPC port
   (serving/v2_grpc.py) which certificate the HTTPS port serves (`UvicornServer.tls`).
3. Restarts (BentoML's circus arbiter). BentoML builds its arbiter with `check_delay=10` and offers no setting,
   so a dead worker waited up to 10 s for its replacement. `quick_respawn` swaps the arbiter class its
   factory looks up by name for one that checks every RESPAWN_CHECK_S.
4. BentoML's batching (`bentoml._internal.marshal.dispatcher.CorkDispatcher`), which CAPSNET_BATCHER=bentoml
   uses without its decorator (serving/batching.py, `CorkBatcher`): `cork_dispatcher`.
5. Starlette's router and static files (starlette 1.10), under serving/app.py's route table: `any_method` lets every
   method reach a route (its endpoint answers a JSON 405; Starlette's own is plain text), `static_file` turns
   StaticFiles' HTTPException into a status and reason for our JSON answer; `cors` puts Starlette's CORS middleware
   in front of serving/app.py's layer when CAPSNET_CORS_ORIGINS names origins.
6. BentoML's error log (`_bentoml_impl.server.app.log_exception`). BentoML logs every request its own API layer
   refuses (a body that is not JSON, a validation error: /reconstruct, /explain, /metadata) at ERROR with a full
   traceback, so that one client's mistakes fill an operator's log. `quiet_client_errors` swaps the function that
   module calls for one that gives a client's error one line at INFO, the route and the reason, at most
   CLIENT_ERROR_LINES per CLIENT_ERROR_WINDOW_S (then how many it left out); a server error keeps BentoML's
   traceback at ERROR. python-multipart's own WARNING per malformed form is turned off (the form is answered 400).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import signal
import sys
import threading
import time
from typing import Any, Callable, Iterator

import anyio

from uvicorn import config as uvicorn_config
from uvicorn.protocols.http.auto import AutoHTTPProtocol

from serving.errors import error_message

CLIENT_ERROR_LINES = 10  # a client's refused requests logged per window, one line each ...
CLIENT_ERROR_WINDOW_S = 10.0  # ... then one line saying how many more there were
RESPAWN_CHECK_S = 0.5  # how often the process manager restarts dead workers (BentoML's default: 10 s)

GONE = "capsnet.gone"  # an ASGI scope key: what to call when the request's client leaves before its answer starts


@contextlib.contextmanager
def cancelled_when_gone(scope: dict) -> Iterator[anyio.CancelScope]:
    """A cancel scope that GuardedHTTPProtocol cancels when the request's client leaves before its answer starts
    (its cancel held in the scope under GONE)."""
    with anyio.CancelScope() as cancel:
        scope[GONE] = cancel.cancel
        yield cancel
_BODY = error_message("the request did not arrive in time")
TIMED_OUT = (b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\nconnection: close\r\n"
             b"content-length: %d\r\n\r\n%s" % (len(_BODY), _BODY))


# 1. The socket

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
        cycle = self.cycle
        super().connection_lost(exc)
        if cycle is not None and not cycle.response_started and (gone := cycle.scope.get(GONE)) is not None:
            gone()

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


def guard_connections(read_timeout: float, max_connections: int) -> None:
    """Make uvicorn's default ("auto") protocol the guarded one, with these bounds."""
    GuardedHTTPProtocol.read_timeout = read_timeout
    GuardedHTTPProtocol.max_connections = max_connections
    uvicorn_config.HTTP_PROTOCOLS["auto"] = f"{__name__}:GuardedHTTPProtocol"


# 2. SIGTERM

class UvicornServer:
    """uvicorn's Server in this worker, as the drain needs it: stop taking connections, then give up waiting."""

    def __init__(self, server: Any) -> None:
        self._server = server

    @property
    def stopping(self) -> bool:
        return bool(self._server.should_exit)

    def stop(self) -> None:
        self._server.should_exit = True

    def force(self) -> None:
        self._server.force_exit = True

    @property
    def tls(self) -> tuple[str, str] | None:
        """The certificate and key files this worker's HTTPS uses (`bentoml serve --ssl-certfile --ssl-keyfile`,
        which BentoML hands to uvicorn's Config), for the gRPC port to serve the same; None over plain HTTP."""
        config = getattr(self._server, "config", None)
        cert, key = getattr(config, "ssl_certfile", None), getattr(config, "ssl_keyfile", None)
        return (str(cert), str(key)) if cert and key else None


def take_sigterm(handler: Callable[[int, Any], None]) -> UvicornServer | None:
    """Put handler in place of uvicorn's SIGTERM handler in this worker (call it from the main thread); None, and
    uvicorn's handler kept, where there is none to take over (a test client, another server)."""
    if threading.current_thread() is not threading.main_thread():
        return None
    server = getattr(signal.getsignal(signal.SIGTERM), "__self__", None)
    if not hasattr(server, "should_exit") or not hasattr(server, "force_exit"):
        return None
    signal.signal(signal.SIGTERM, handler)
    return UvicornServer(server)


# 3. Restarts

def quick_respawn() -> bool:
    """Make BentoML's process manager check its workers every RESPAWN_CHECK_S instead of every 10 s, for the
    `bentoml serve` that imports the service. False (and BentoML's default kept) if its factory changed."""
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


# 4. BentoML's batching

def cork_dispatcher() -> type:
    """BentoML's CorkDispatcher class, as `@bentoml.api(batchable=True)` uses it."""
    from bentoml._internal.marshal.dispatcher import CorkDispatcher

    return CorkDispatcher


# 5. Starlette's router and static files

def any_method(route: Any) -> Any:
    """route (a starlette.routing.Route), matched for every method: Route.matches compares `methods` when set."""
    route.methods = None
    return route


def cors(app: Callable, origins: tuple[str, ...]) -> Callable:
    """app behind Starlette's CORS middleware for these origins (CAPSNET_CORS_ORIGINS): preflights answered first."""
    from starlette.middleware.cors import CORSMiddleware

    return CORSMiddleware(app, allow_origins=list(origins), allow_methods=["GET", "POST"],
                          allow_headers=["Authorization", "Content-Type", "Inference-Header-Content-Length"],
                          expose_headers=["Inference-Header-Content-Length"])


async def static_file(files: Any, scope: dict, receive: Callable, send: Callable) -> tuple[int, str] | None:
    """Serve a StaticFiles request; the status and reason of its refusal (a missing file), or None once answered."""
    from starlette.exceptions import HTTPException

    try:
        await files(scope, receive, send)
    except HTTPException as err:
        return err.status_code, str(err.detail)
    return None


# 6. BentoML's error log

class RateLimitedLog:
    """At most `lines` lines per `window` seconds to `log` at INFO; then, at the next line after the window, one
    saying how many were left out."""

    def __init__(self, log: logging.Logger, lines: int = CLIENT_ERROR_LINES, window: float = CLIENT_ERROR_WINDOW_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.log, self.lines, self.window, self.clock = log, lines, window, clock
        self.lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        """A new window from now, nothing counted."""
        with self.lock:
            self.started, self.count, self.left_out = self.clock(), 0, 0

    def __call__(self, message: str) -> None:
        with self.lock:
            now = self.clock()
            if now - self.started >= self.window:
                if self.left_out:
                    self.log.info("%d more refused requests in %.0f s, not logged one by one", self.left_out,
                                  self.window)
                self.started, self.count, self.left_out = now, 0, 0
            self.count += 1
            if self.count > self.lines:
                self.left_out += 1
                return
        self.log.info("%s", message)


def client_error(err: BaseException | None) -> str | None:
    """The reason when err is a client's error as BentoML's API layer raises it (pydantic's ValidationError, or a
    BentoMLException with a 4xx status); None for anything else."""
    from bentoml.exceptions import BentoMLException
    from pydantic import ValidationError

    if isinstance(err, ValidationError):
        return f"{err.error_count()} validation error(s): {err.errors(include_context=False, include_input=False)[0]['msg']}"
    if isinstance(err, BentoMLException) and 400 <= err.error_code.value < 500:
        return f"{err.error_code.value}: {err}"
    return None


def quiet_client_errors(log: logging.Logger) -> bool:
    """Give the client errors BentoML's API layer logs one rate-limited INFO line each (see 6. above). False, and
    BentoML's logging kept, if the module no longer calls log_exception."""
    from _bentoml_impl.server import app as bentoml_app

    original = getattr(bentoml_app, "log_exception", None)
    if original is None or getattr(original, "capsnet_quiet", False):
        return original is not None
    limited = RateLimitedLog(log)

    def log_exception(request: Any, exc_info: Any = True) -> None:
        reason = client_error(sys.exc_info()[1])
        if reason is None:
            original(request, exc_info)  # ours: a traceback in the log means a bug
        else:
            limited(f"refused {request.method} {request.url.path}: {reason}")

    # python-multipart logs each malformed form at WARNING before raising the error that is answered with a 400:
    # a line per bad upload, not rate-limited, that says nothing the answer does not
    logging.getLogger("python_multipart.multipart").setLevel(logging.ERROR)
    log_exception.capsnet_quiet = True  # type: ignore[attr-defined]
    log_exception.limited = limited  # type: ignore[attr-defined]
    bentoml_app.log_exception = log_exception
    return True


# The shapes the patches above rely on

def problems() -> list[str]:
    """What has changed shape in the internals above; empty when every patch still applies as written."""
    found = []
    if "auto" not in uvicorn_config.HTTP_PROTOCOLS:
        found.append("uvicorn.config.HTTP_PROTOCOLS has no 'auto' entry to point at GuardedHTTPProtocol")
    for name in ("connection_made", "data_received", "on_response_complete", "connection_lost"):
        if not callable(getattr(AutoHTTPProtocol, name, None)):
            found.append(f"uvicorn's HTTP protocol has no method {name}")
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
    from uvicorn.server import Server

    init = inspect.getsource(HttpToolsProtocol.__init__)
    for attribute in ("self.connections", "self.cycle", "self.loop", "self.transport"):
        if attribute not in init:
            found.append(f"uvicorn's HTTP protocol sets no {attribute} in __init__")
    from uvicorn.protocols.http.httptools_impl import RequestResponseCycle

    cycle = inspect.getsource(RequestResponseCycle.__init__)
    for attribute in ("self.scope", "self.response_started"):
        if attribute not in cycle:
            found.append(f"uvicorn's RequestResponseCycle sets no {attribute} in __init__ (GONE needs it)")
    server = Server(uvicorn_config.Config(app=None))
    if not (hasattr(server, "should_exit") and hasattr(server, "force_exit")
            and getattr(Server.handle_exit, "__name__", "") == "handle_exit"):
        found.append("uvicorn's Server has no should_exit / force_exit / handle_exit")
    if "signal.signal(sig, self.handle_exit)" not in inspect.getsource(Server.capture_signals):
        found.append("uvicorn's Server no longer installs its bound handle_exit as the SIGTERM handler")
    from bentoml._internal.utils import circus

    if "check_delay=kwargs.pop(\"check_delay\"" not in inspect.getsource(circus.create_standalone_arbiter) \
            or "arbiter_cls = ThreadedArbiter if threaded else Arbiter" not in inspect.getsource(
                circus.create_standalone_arbiter):
        found.append("BentoML's create_standalone_arbiter no longer looks up Arbiter by name with check_delay")
    from starlette.routing import Route

    if "self.methods" not in inspect.getsource(Route.matches):
        found.append("Starlette's Route.matches no longer reads self.methods")
    from _bentoml_impl.server import app as bentoml_app

    if "log_exception(request)" not in inspect.getsource(bentoml_app.ServiceAppFactory.api_endpoint_wrapper):
        found.append("BentoML's api_endpoint_wrapper no longer calls log_exception(request)")
    parameters = inspect.signature(cork_dispatcher().__init__).parameters
    if not {"max_latency_in_ms", "max_batch_size", "fallback", "get_batch_size", "batch_dim"} <= set(parameters):
        found.append(f"BentoML's CorkDispatcher takes {sorted(parameters)}")
    return found
