"""The framework internals serving/framework.py patches still have the shape its patches rely on, and the check
notices when one does not (an upgrade of BentoML or uvicorn then fails here, not quietly in production)."""

from __future__ import annotations

from uvicorn import config as uvicorn_config

from serving import framework


def test_every_patched_internal_has_the_shape_its_patch_relies_on():
    assert framework.problems() == []


def test_a_changed_internal_is_named(monkeypatch):
    monkeypatch.delitem(uvicorn_config.HTTP_PROTOCOLS, "auto")
    monkeypatch.setattr(framework.AutoHTTPProtocol, "on_response_complete", None)
    assert framework.problems() == [
        "uvicorn.config.HTTP_PROTOCOLS has no 'auto' entry to point at GuardedHTTPProtocol",
        "uvicorn's HTTP protocol has no method on_response_complete",
    ]


def test_the_guard_is_uvicorns_default_protocol_once_installed(monkeypatch):
    monkeypatch.setitem(uvicorn_config.HTTP_PROTOCOLS, "auto", uvicorn_config.HTTP_PROTOCOLS["auto"])
    for name in ("read_timeout", "max_connections"):  # restored afterwards
        monkeypatch.setattr(framework.GuardedHTTPProtocol, name, getattr(framework.GuardedHTTPProtocol, name))
    framework.guard_connections(7.0, 9)
    assert uvicorn_config.HTTP_PROTOCOLS["auto"] == "serving.framework:GuardedHTTPProtocol"
    assert (framework.GuardedHTTPProtocol.read_timeout, framework.GuardedHTTPProtocol.max_connections) == (7.0, 9)


def test_bentomls_process_manager_checks_its_workers_twice_a_second(monkeypatch):
    from bentoml._internal.utils import circus

    monkeypatch.setattr(circus, "Arbiter", circus.Arbiter)  # restored afterwards
    assert framework.quick_respawn()
    arbiter = circus.create_standalone_arbiter([])  # what `bentoml serve` builds
    assert type(arbiter).__name__ == "QuickRespawnArbiter" and arbiter.check_delay == framework.RESPAWN_CHECK_S


def test_a_clients_refused_request_is_one_info_line_and_a_bug_keeps_its_traceback(client, caplog):
    """BentoML's API layer refuses a body that is not JSON: one INFO line with the route and the reason, never an
    ERROR with a traceback (serving/framework.py, 6.); past CLIENT_ERROR_LINES in a window, the rest are counted."""
    import logging

    from _bentoml_impl.server import app as bentoml_app

    from serving.framework import CLIENT_ERROR_LINES

    bentoml_app.log_exception.limited.reset()  # a window of its own: earlier tests' refusals may have used this one's
    with caplog.at_level(logging.INFO):
        for _ in range(CLIENT_ERROR_LINES + 5):
            answer = client.post("/reconstruct", content=b"{not json", headers={"Content-Type": "application/json"})
            assert answer.status_code == 400
    refused = [r for r in caplog.records if "refused POST /reconstruct" in r.getMessage()]
    assert [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info] == []
    assert len(refused) == CLIENT_ERROR_LINES and all(r.levelno == logging.INFO for r in refused)


def test_the_rate_limited_log_counts_what_it_left_out():
    import logging

    from serving.framework import RateLimitedLog

    lines: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(record.getMessage())

    log = logging.getLogger("capsnet.test.ratelimit")
    log.setLevel(logging.INFO)
    log.addHandler(Keep())
    now = [0.0]
    limited = RateLimitedLog(log, lines=2, window=10.0, clock=lambda: now[0])
    for i in range(5):
        limited(f"line {i}")
    now[0] = 11.0
    limited("line 5")
    assert lines == ["line 0", "line 1", "3 more refused requests in 10 s, not logged one by one", "line 5"]
